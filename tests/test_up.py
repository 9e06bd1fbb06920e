"""`protostar up` as a new user runs it: everything starts, Flower sees the workers, Ctrl-C leaves nothing
behind (during the start-up too), a second `up` finds the data of the first, and what dies is restarted."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from protostar.runtime.process import free_port, port_is_free
from tests.conftest import wait_for

pytestmark = pytest.mark.slow


class Up:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.out = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "protostar.cli", "up"], env=env, stdout=self.out, stderr=subprocess.STDOUT
        )
        self.text = wait_for(self._banner, timeout=120, every=0.3, what=f"the banner (log: {log})")

    def _banner(self) -> str | None:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        text = self.log.read_text()
        return text if "Ctrl-C stops everything" in text else None

    def value(self, pattern: str) -> str:
        match = re.search(pattern, self.text)
        assert match, self.text[-2000:]
        return match.group(1)

    def interrupt(self) -> list[psutil.Process]:
        family = psutil.Process(self.proc.pid).children(recursive=True)
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(timeout=30) == 0, self.log.read_text()[-3000:]
        self.out.close()
        return family


@pytest.fixture
def up_env() -> Iterator[dict[str, str]]:
    data = Path(tempfile.mkdtemp(prefix="protostar-up-"))
    data.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROTOSTAR_")}
    env.update(
        {
            "PROTOSTAR_DATA_DIR": str(data / "data"),
            **{
                f"PROTOSTAR_{name}_PORT": str(free_port())
                for name in ("REDIS", "POSTGRES", "S3", "LLM", "API", "FLOWER")
            },
        }
    )
    yield env
    shutil.rmtree(data, ignore_errors=True)


def test_up_serves_shows_workers_in_flower_and_stops_clean(up_env: dict[str, str], tmp_path: Path) -> None:
    up = Up(up_env, tmp_path / "up-1.log")
    api = up.value(r"API\s+(http://\S+)")
    key = up.value(r"API key\s+(\S+)")
    flower = up.value(r"Flower\s+(http://\S+)")
    stored = json.loads((Path(up_env["PROTOSTAR_DATA_DIR"]) / "secrets.json").read_text())
    user, password = up.value(r"\(user (\S+),"), stored["flower_password"]
    assert (
        up.value(r"password: (flower_password in \S+)\)")
        == f"flower_password in {up_env['PROTOSTAR_DATA_DIR']}/secrets.json"
    )
    assert up.value(r"API docs\s+(\S+)") == f"{api}/docs"
    try:
        each_process_holds_only_its_secrets(up, key, stored)
        with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
            assert client.get("/readyz").status_code == 200
            job_id = client.post("/v1/probes", json={"queue": "ingest"}).json()["job_id"]
            wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded", timeout=60)
        assert httpx.get(f"{flower}/api/workers").status_code == 401

        def workers() -> dict[str, tuple[list[str], str]] | None:
            body = httpx.get(f"{flower}/api/workers?refresh=1", auth=(user, password), timeout=10).json()
            seen = {
                name.split("@")[0]: (
                    [q["name"] for q in w.get("active_queues", [])],
                    w.get("stats", {}).get("pool", {}).get("implementation", ""),
                )
                for name, w in body.items()
            }
            return seen if {"ingest", "chat", "summary", "maintenance", "webhooks"} <= set(seen) else None

        seen = wait_for(workers, timeout=60, every=1, what="Flower to list the workers")
        assert seen["ingest"][0] == ["ingest"] and "prefork" in seen["ingest"][1]
        assert seen["chat"][0] == ["chat"] and "thread" in seen["chat"][1]
        assert seen["summary"][0] == ["summary"]
        assert seen["maintenance"][0] == ["maintenance"]  # beat's tasks on a worker of their own
        assert seen["webhooks"][0] == ["webhooks"] and "thread" in seen["webhooks"][1]  # deliveries, on their own

        def reconciled() -> bool:  # beat sends the reconciler every few seconds; the maintenance worker runs it
            lines = up.log.read_text().splitlines()
            ran = "protostar.maintenance.reconcile["
            return any(line.startswith("worker-maintenance") and ran in line and "succeeded" in line for line in lines)

        wait_for(reconciled, timeout=60, every=1, what="the maintenance worker to run the reconciler")
    finally:
        family = up.interrupt()
    shows_no_stored_secret(up.log.read_text(), key, stored)
    gone = psutil.wait_procs(family, timeout=10)[1]
    assert not gone, f"left behind: {[p.pid for p in gone]}"

    again = Up(up_env, tmp_path / "up-2.log")
    try:
        assert again.value(r"API key\s+(\S+)") == key  # kept in the data directory
        with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
            assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
        the_cli_needs_no_setup(up_env, api, key, tmp_path)
    finally:
        family = again.interrupt()
    assert not psutil.wait_procs(family, timeout=10)[1]
    shows_no_stored_secret(again.log.read_text(), key, stored)


def shows_no_stored_secret(log: str, key: str, stored: dict[str, str]) -> None:
    """``up``'s banner and everything its processes logged: the API key once (the operator needs it), no stored
    secret (Redis, PostgreSQL, object-store keys, LLM key, Flower password)."""
    assert log.count(key) == 1, "the API key is shown once, in the banner"
    leaked = [name for name, value in stored.items() if name != "bootstrap_api_key" and value in log]
    assert not leaked, f"up's output carries the stored secrets {leaked}"


def each_process_holds_only_its_secrets(up: Up, key: str, stored: dict[str, str]) -> None:
    """The ingest worker (it parses untrusted files) holds no admin key, no Flower password, no LLM key and only
    the object store's read-only pair; Flower alone its password; beat nothing but the service URLs."""
    envs = {}
    for marker in ("ingest@", "flower", "beat", "uvicorn"):
        proc = wait_for(lambda m=marker: _child(up, m), timeout=30, what=marker)
        envs[marker] = proc.environ()
    root_s3 = {stored["s3_access_key"], stored["s3_secret_key"]}
    for marker, env in envs.items():
        assert not root_s3 & set(env.values()), f"{marker} holds the object store's root keys"
        assert ("FLOWER_BASIC_AUTH" in env) == (marker == "flower"), marker
        assert (env.get("PROTOSTAR_BOOTSTRAP_API_KEY") == key) == (marker == "uvicorn"), marker
    ingest = envs["ingest@"]
    assert ingest["PROTOSTAR_S3_SECRET_KEY"] == stored["s3_read_secret_key"]
    assert stored["llm_api_key"] not in ingest.values()
    assert not {"PROTOSTAR_S3_ACCESS_KEY", "PROTOSTAR_S3_SECRET_KEY", "PROTOSTAR_LLM_API_KEY"} & set(envs["beat"])


def the_cli_needs_no_setup(up_env: dict[str, str], api: str, key: str, cwd: Path) -> None:
    """``up`` wrote the client file (0600) with the API's URL and key; the CLI finds it knowing only the data
    dir (as for a user who moved it): no URL, no key."""
    client_file = Path(up_env["PROTOSTAR_DATA_DIR"]) / "client.json"
    assert client_file.stat().st_mode & 0o777 == 0o600
    assert json.loads(client_file.read_text()) == {"api_url": api, "api_key": key}
    env = {k: v for k, v in up_env.items() if not k.startswith("PROTOSTAR_")}
    done = subprocess.run(
        [sys.executable, "-m", "protostar.cli", "documents", "ls", "--json"],
        env={**env, "PROTOSTAR_DATA_DIR": up_env["PROTOSTAR_DATA_DIR"]},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout), list)


def test_a_busy_port_is_a_clear_message(up_env: dict[str, str], tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(up_env["PROTOSTAR_REDIS_PORT"])))
        taken.listen()
        result = subprocess.run(
            [sys.executable, "-m", "protostar.cli", "up"],
            env=up_env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 1
    assert "already in use" in result.stderr and "PROTOSTAR_REDIS_PORT" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the system user and /var/lib/protostar are root's business")
def test_up_as_root_with_the_data_dir_in_a_closed_home(up_env: dict[str, str], tmp_path: Path) -> None:
    home = Path(tempfile.mkdtemp(prefix="protostar-home-"))  # mode 0700, as /root
    data = home / "clone" / ".protostar"
    env = {**up_env, "PROTOSTAR_DATA_DIR": str(data)}
    placed: Path | None = None
    try:
        up = Up(env, tmp_path / "up-root.log")
        try:
            placed = (data / "postgres").resolve()
            assert (data / "postgres").is_symlink() and placed.parent == Path("/var/lib/protostar")
            assert f"postgres/ -> {placed}" in up.text  # the banner says where PostgreSQL's data lives
            api, key = up.value(r"API\s+(http://\S+)"), up.value(r"API key\s+(\S+)")
            with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
                ready = client.get("/readyz")
                assert ready.status_code == 200 and ready.json()["llm"]["state"] in {"building", "starting", "ready"}
                job_id = client.post("/v1/probes", json={"queue": "ingest"}).json()["job_id"]
                wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded", timeout=60)
        finally:
            family = up.interrupt()
        assert not psutil.wait_procs(family, timeout=10)[1]
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
    finally:
        shutil.rmtree(home, ignore_errors=True)
        if placed is not None and placed.parent == Path("/var/lib/protostar"):
            shutil.rmtree(placed, ignore_errors=True)


def _child(up: Up, marker: str) -> psutil.Process | None:
    """The child of ``up`` whose command line contains ``marker`` (None while there is none)."""
    for child in psutil.Process(up.proc.pid).children():
        with contextlib.suppress(psutil.Error):
            if marker in " ".join(child.cmdline()):
                return child
    return None


def _ready(api: str) -> bool:
    try:
        return httpx.get(f"{api}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_up_restarts_what_dies_and_gives_up_on_what_keeps_dying(up_env: dict[str, str], tmp_path: Path) -> None:
    """SIGKILL an embedded service or a worker under `up`: it comes back (the API is ready again); a worker
    killed each time it comes back makes `up` stop everything and exit 1."""
    up = Up({**up_env, "PROTOSTAR_RESTART_LIMIT": "3", "PROTOSTAR_RESTART_BACKOFF": "0.2"}, tmp_path / "up.log")
    api = up.value(r"API\s+(http://\S+)")
    family: dict[int, psutil.Process] = {}

    def note_family() -> None:
        with contextlib.suppress(psutil.Error):
            family.update({p.pid: p for p in psutil.Process(up.proc.pid).children(recursive=True)})

    try:
        services = (("redis", "redis-server"), ("postgres", "pgdata"), ("s3", "weed"), ("llm", "llama-server"))
        for name, marker in services:
            first = wait_for(lambda m=marker: _child(up, m), timeout=60, what=f"{name} (log: {up.log})")
            note_family()
            first.kill()
            wait_for(
                lambda m=marker, old=first.pid: (c := _child(up, m)) is not None and c.pid != old,
                timeout=60,
                what=f"a new {name} (log: {up.log})",
            )
            wait_for(lambda: _ready(api), timeout=60, what=f"/readyz after {name} came back (log: {up.log})")
            assert f"{name} exited (killed by SIGKILL); restarting in" in up.log.read_text()
        for _ in range(20):  # the chat worker, each time it is back, until `up` gives up on it
            note_family()
            if up.proc.poll() is not None:
                break
            chat = wait_for(lambda: _child(up, "chat@") or up.proc.poll() is not None, timeout=30, what="worker-chat")
            if isinstance(chat, psutil.Process):
                with contextlib.suppress(psutil.Error):
                    chat.kill()
        assert up.proc.wait(timeout=60) == 1, up.log.read_text()[-3000:]
    finally:
        if up.proc.poll() is None:
            up.interrupt()
        up.out.close()
    text = up.log.read_text()
    assert "worker-chat exited (killed by SIGKILL) 4 times within 120 s; giving up" in text
    assert not psutil.wait_procs(list(family.values()), timeout=10)[1]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_during_the_start_up_stops_everything(
    up_env: dict[str, str], tmp_path: Path, signum: signal.Signals
) -> None:
    """SIGINT or SIGTERM while `up` is still starting (SIGINT ignored, as a shell ignores it for a command
    started with `&`): it stops within seconds, exits 0 and leaves no process and no port behind."""
    log = tmp_path / "up.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "protostar.cli", "up"],
            env=up_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # noqa: PLW1509
        )
        try:
            try:
                wait_for(lambda: "started api" in log.read_text(), timeout=120, what="the API's start")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; up's log ends:\n{log.read_text()[-3000:]}") from None
            family = psutil.Process(proc.pid).children(recursive=True)
            proc.send_signal(signum)
            assert proc.wait(timeout=40) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    assert "Protostar is up" not in log.read_text()
    assert not psutil.wait_procs(family, timeout=10)[1]
    ports = [int(v) for k, v in up_env.items() if k.endswith("_PORT")]
    assert all(port_is_free("127.0.0.1", port) for port in ports)
