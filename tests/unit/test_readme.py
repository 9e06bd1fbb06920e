"""The README stays true: every setting is documented, every process is in the Procfile."""

from __future__ import annotations

from pathlib import Path

from protostar.commands import WORKERS
from protostar.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [
        f"PROTOSTAR_{name.upper()}" for name in Settings.model_fields if f"PROTOSTAR_{name.upper()}" not in readme
    ]
    assert not missing


def test_the_procfile_runs_every_worker_beat_flower_and_the_api() -> None:
    procfile = (ROOT / "Procfile").read_text()
    for name in WORKERS:
        assert f"worker-{name}: protostar worker {name}" in procfile
    for line in ("web: protostar api", "beat: protostar beat", "flower: protostar flower"):
        assert line in procfile
