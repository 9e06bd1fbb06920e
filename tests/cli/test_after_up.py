"""Right after ``protostar up`` the CLI needs no setup: ``up`` writes the client file (mode 0600) with the API's
URL and key, and ``protostar …`` finds it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from protostar.runtime.process import free_port
from tests.test_up import Up

pytestmark = pytest.mark.slow


@pytest.fixture
def data_dir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="protostar-up-cli-"))
    root.chmod(0o755)  # the embedded PostgreSQL runs as a system user when tests run as root
    yield root / "data"
    shutil.rmtree(root, ignore_errors=True)


def test_the_cli_talks_to_the_api_up_started_with_no_setup(data_dir: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROTOSTAR_")}
    ports = {f"PROTOSTAR_{name}_PORT": str(free_port()) for name in ("REDIS", "POSTGRES", "S3", "API", "FLOWER")}
    up = Up({**env, "PROTOSTAR_DATA_DIR": str(data_dir), **ports}, tmp_path / "up.log")
    try:
        client_file = data_dir / "client.json"
        assert client_file.stat().st_mode & 0o777 == 0o600
        saved = json.loads(client_file.read_text())
        assert saved == {"api_url": up.value(r"API\s+(http://\S+)"), "api_key": up.value(r"API key\s+(\S+)")}
        # Only the data dir is known (as for a user who moved it); no URL, no key.
        done = subprocess.run(
            [sys.executable, "-m", "protostar.cli", "documents", "ls", "--json"],
            env={**env, "PROTOSTAR_DATA_DIR": str(data_dir)},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == []
    finally:
        up.interrupt()
