"""The client as a user installs it apart from the server: a new virtual environment holding only httpx, and
this package installed with ``--no-deps``. It imports, and loads no third-party module but httpx's own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

CHECK = """
import sys
from protostar.client import AsyncClient, Client
third_party = {m.split(".")[0] for m in sys.modules} - set(sys.stdlib_module_names)
print(sorted(third_party - {"__main__", "_distutils_hack"}))
"""


def test_the_client_runs_in_a_venv_with_only_httpx(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "httpx==0.28.1"], check=True, timeout=300, capture_output=True)
    subprocess.run([*pip, "--no-deps", str(ROOT)], check=True, timeout=300, capture_output=True)
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", CHECK],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    loaded = set(ast.literal_eval(done.stdout.strip()))
    assert loaded <= {"protostar", "httpx", "httpcore", "h11", "anyio", "sniffio", "idna", "certifi"}, loaded
