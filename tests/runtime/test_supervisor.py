"""The supervisor on real processes: what dies is restarted with a line saying so, what keeps dying makes it
give up and stop everything, nothing is restarted once the stop began, and an embedded service killed with
SIGKILL comes back on its port with its data."""

from __future__ import annotations

import io
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
import redis

from protostar.runtime.postgres import EmbeddedPostgres
from protostar.runtime.process import free_port
from protostar.runtime.redis import EmbeddedRedis
from protostar.supervisor import RestartPolicy, Supervisor
from tests.conftest import Live, wait_for

FAST = RestartPolicy(limit=3, window=60, backoff=0.05, backoff_cap=0.2)
SLEEPER = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)"]
QUITTER = [sys.executable, "-c", "raise SystemExit(3)"]


@pytest.fixture
def out() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def supervisor(out: io.StringIO) -> Iterator[Supervisor]:
    supervisor = Supervisor(env=dict(os.environ), out=out, policy=FAST, stop_timeout=3)
    yield supervisor
    supervisor.stop_all()


def new_pid(supervisor: Supervisor, name: str, old: int) -> int | None:
    pid = supervisor.pid(name)
    return pid if pid is not None and pid != old else None


def test_a_killed_process_is_restarted_with_a_line_saying_so(supervisor: Supervisor, out: io.StringIO) -> None:
    supervisor.start("sleeper", SLEEPER)
    supervisor.keep_alive()
    first = wait_for(lambda: supervisor.pid("sleeper"), what="the first sleeper")
    os.kill(first, signal.SIGKILL)
    second = wait_for(lambda: new_pid(supervisor, "sleeper", first), timeout=10, what="a new sleeper")
    assert psutil.Process(second).is_running()
    assert "sleeper exited (killed by SIGKILL); restarting in" in out.getvalue()
    assert "restart 1 of 3 in 60 s" in out.getvalue()


def test_a_process_that_keeps_dying_makes_it_give_up_and_stop_everything(
    supervisor: Supervisor, out: io.StringIO
) -> None:
    supervisor.start("sleeper", SLEEPER)
    sleeper = wait_for(lambda: supervisor.pid("sleeper"), what="the sleeper")
    supervisor.start("quitter", QUITTER)
    assert supervisor.wait() == "quitter"  # the loop of `protostar up`, on this thread
    supervisor.stop_all()
    assert not psutil.pid_exists(sleeper)
    text = out.getvalue()
    assert text.count("quitter exited (code 3); restarting") == FAST.limit
    assert "quitter exited (code 3) 4 times within 60 s; giving up" in text


def test_a_storm_of_kills_on_a_process_that_had_started_never_makes_it_give_up(out: io.StringIO) -> None:
    """Only a failed start counts (a death sooner than ``min_uptime`` after the start): a running worker killed
    again and again from outside is restarted every time."""
    policy = RestartPolicy(limit=2, window=60, min_uptime=0.3, backoff=0.05, backoff_cap=0.1)
    supervisor = Supervisor(env=dict(os.environ), out=out, policy=policy, stop_timeout=3)
    try:
        supervisor.start("sleeper", SLEEPER)
        supervisor.keep_alive()
        pid = wait_for(lambda: supervisor.pid("sleeper"), what="the sleeper")
        for _ in range(policy.limit + 3):
            time.sleep(policy.min_uptime + 0.2)  # it ran: past its start
            os.kill(pid, signal.SIGKILL)
            pid = wait_for(lambda old=pid: new_pid(supervisor, "sleeper", old), timeout=10, what="a new sleeper")
        assert supervisor.gave_up is None
        assert out.getvalue().count("sleeper exited (killed by SIGKILL); restarting") == policy.limit + 3
    finally:
        supervisor.stop_all()


def test_giving_up_in_the_background_stops_everything(supervisor: Supervisor) -> None:
    supervisor.start("sleeper", SLEEPER)
    sleeper = wait_for(lambda: supervisor.pid("sleeper"), what="the sleeper")
    supervisor.start("quitter", QUITTER)
    supervisor.keep_alive()
    wait_for(lambda: supervisor.gave_up == "quitter", timeout=20, what="the supervisor to give up")
    wait_for(lambda: supervisor.pid("sleeper") is None, timeout=10, what="the sleeper to be stopped")
    assert not psutil.pid_exists(sleeper)


def test_nothing_restarts_once_the_stop_began(supervisor: Supervisor) -> None:
    supervisor.start("sleeper", SLEEPER)
    supervisor.keep_alive()
    first = wait_for(lambda: supervisor.pid("sleeper"), what="the sleeper")
    os.kill(first, signal.SIGKILL)
    supervisor.stop_all()
    marker = SLEEPER[-1]
    with pytest.raises(AssertionError):  # waits 2 s for a restart that must not come
        wait_for(
            lambda: [p for p in psutil.Process().children() if marker in " ".join(p.cmdline())],
            timeout=2,
            what="a restarted sleeper",
        )
    assert supervisor.pid("sleeper") is None


def test_what_a_killed_program_left_running_goes_before_it_restarts(supervisor: Supervisor) -> None:
    """A prefork worker killed with SIGKILL leaves its pool children: they must not run beside the new one."""
    forker = "import os, sys, time; pid = os.fork(); print(pid, flush=True); time.sleep(600)"
    supervisor.start("forker", [sys.executable, "-c", forker])
    first = wait_for(lambda: supervisor.pid("forker"), what="the forker")
    child = wait_for(lambda: psutil.Process(first).children(), what="its child")[0]
    supervisor.keep_alive()
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: new_pid(supervisor, "forker", first), timeout=10, what="a new forker")
    wait_for(lambda: not child.is_running(), timeout=10, what="the old child to be gone")


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="protostar-supervisor-"))
    path.chmod(0o755)  # as root, PostgreSQL runs as a system user that must reach it
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_a_killed_redis_comes_back_on_its_port_with_its_data(data_dir: Path, supervisor: Supervisor) -> None:
    service = EmbeddedRedis(data_dir=data_dir / "redis", port=free_port(), password="secret")
    service.start()
    supervisor.watch(service)
    supervisor.keep_alive()
    client = redis.Redis(host=service.host, port=service.port, password="secret", socket_timeout=2)
    client.set("kept", "yes")
    first = service.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: new_pid(supervisor, "redis", first), timeout=20, what="a new redis")
    assert wait_for(lambda: _get(client, "kept"), timeout=20, what="redis to answer") == b"yes"
    client.close()


def _get(client: redis.Redis, key: str) -> bytes | None:
    try:
        value: bytes | None = client.get(key)
    except redis.RedisError:
        return None
    return value


@pytest.mark.slow
def test_a_killed_postgres_comes_back_clean(data_dir: Path, supervisor: Supervisor) -> None:
    service = EmbeddedPostgres(data_dir=data_dir / "postgres", port=free_port(), password="secret")
    service.start()
    supervisor.watch(service)
    supervisor.keep_alive()
    url = service.url.replace("+psycopg", "")
    held = psycopg.connect(url, autocommit=True)  # a backend alive when the postmaster is killed
    held.execute("CREATE TABLE kept (v int)")
    held.execute("INSERT INTO kept VALUES (1)")
    first = service.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: new_pid(supervisor, "postgres", first), timeout=30, what="a new postgres")
    assert wait_for(lambda: _count(url), timeout=30, what="postgres to answer") == 1
    held.close()


def _count(url: str) -> int | None:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            row = conn.execute("SELECT count(*) FROM kept").fetchone()
    except psycopg.OperationalError:
        return None
    return int(row[0]) if row else None


@pytest.mark.slow
def test_a_killed_worker_of_the_live_stack_comes_back(live: Live) -> None:
    """The test stack's supervisor restarts what dies too: the fault tests rely on it."""
    first = live.supervisor.pid("worker-chat")
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: new_pid(live.supervisor, "worker-chat", first), timeout=20, what="a new worker-chat")
    with live.client() as api:
        job_id = api.post("/v1/probes", json={"queue": "chat", "steps": 1}).json()["job_id"]
        wait_for(
            lambda: api.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded",
            timeout=60,
            what=f"a probe on the restarted chat worker (log: {live.log})",
        )
