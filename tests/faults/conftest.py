"""What the fault scenarios share: beat (the reconciler recovers what a fault left behind), the chunk counts of
an undisturbed ingest of each file they upload, and :func:`heal`, which every scenario runs in a ``finally`` so
the next one (and the rest of the session) finds the stack whole: services running, every process of the
supervisor alive, ``/readyz`` 200 and a probe through each queue.

These tests run last in the session (``tests/conftest.py`` moves them), since they disturb the shared stack.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from bench.chaos import faults
from protostar import commands
from tests.conftest import Live, wait_for
from tests.corpus_files import CORPUS

# Small files, parsed in a second or two each; norwich-city.txt is long enough (many chunks) to be killed mid-job.
FILES = ("norwich-city.txt", "family-day.eml", "stanley-cups.csv", "fake-doc.rtf")
SETTLE = 120.0  # seconds for every accepted job to end after a fault (the 90 s plus run time)


def pid_of(live: Live, name: str) -> int | None:
    """The current pid of a supervised process."""
    return live.supervisor.pid(name)


def argv_of(live: Live, name: str) -> list[str]:
    if name == "api":
        return commands.api(live.settings)
    if name == "beat":
        return commands.beat(live.settings)
    return commands.worker(live.settings, name.removeprefix("worker-"))


def names(live: Live) -> list[str]:
    return live.supervisor.names()


@dataclass
class Scenario:
    """A fault scenario's notes: what the product did not do by itself (a process nobody restarted...)."""

    live: Live
    engine: Engine
    notes: list[str] = field(default_factory=list)

    def restarted(self, name: str, old_pid: int | None, timeout: float = 30.0) -> int | None:
        """Wait for the supervisor to run ``name`` again (a new pid). If it does not, note it (the scenario fails)
        and start it here, so the rest of the scenario (what became of the jobs) is still checked."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = pid_of(self.live, name)
            if pid is not None and pid != old_pid:
                return pid
            time.sleep(0.2)
        self.notes.append(f"the supervisor did not restart {name} within {timeout:.0f} s: the test started it")
        self.live.supervisor.start(name, argv_of(self.live, name))
        return None

    def revive_dead(self, grace: float = 20.0) -> None:
        """Any supervised process still dead after ``grace`` seconds: noted (the supervisor's job) and started
        here, so what became of the jobs is still checked."""
        deadline = time.monotonic() + grace
        for name in names(self.live):
            while pid_of(self.live, name) is None and time.monotonic() < deadline:
                time.sleep(0.2)
            if pid_of(self.live, name) is None:
                self.notes.append(f"{name} died and the supervisor did not restart it: the test started it")
                self.live.supervisor.start(name, argv_of(self.live, name))


def heal(live: Live, notes: list[str] | None = None, *, grace: float = 20.0) -> None:
    """Leave the stack whole: thaw and start the embedded services, start any supervised process that is still
    dead after ``grace`` seconds (the supervisor's job; noted when the test had to do it), wait for /readyz and a
    probe through each queue."""
    notes = notes if notes is not None else []
    for service in live.stack.services:
        faults.thaw(service.pid)
        if service.pid is None:
            service.start(120)
    deadline = time.monotonic() + grace
    for name in names(live):
        while pid_of(live, name) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_of(live, name) is None:
            notes.append(f"{name} was dead and not restarted by the supervisor: the test started it")
            live.supervisor.start(name, argv_of(live, name))
    with live.client() as api:
        wait_for(lambda: _ready(api), timeout=120, every=0.5, what=f"/readyz after a fault (log: {live.log})")
        for queue in ("ingest", "chat", "summary"):

            def probed(q: str = queue) -> bool:
                try:
                    response = api.post("/v1/probes", json={"queue": q, "steps": 1})
                except httpx.HTTPError:
                    return False
                if response.status_code != 202:
                    return False
                job_id = response.json()["job_id"]
                try:
                    wait_for(
                        lambda: api.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded",
                        timeout=60,
                        every=0.3,
                        what=f"a probe on {q}",
                    )
                except AssertionError:
                    return False
                return True

            wait_for(probed, timeout=240, every=1, what=f"a worker on {queue} after a fault (log: {live.log})")


def _ready(api: httpx.Client) -> bool:
    try:
        return api.get("/readyz").status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="session")
def beat(live: Live) -> Iterator[None]:
    """Beat under the supervisor (the live fixture does not run it: only these tests need the reconciler, every
    ``PROTOSTAR_RECONCILE_INTERVAL`` seconds of TEST_ENV). It runs until the session ends; these tests run last."""
    if "beat" not in names(live):
        live.supervisor.start("beat", commands.beat(live.settings))
    yield


@pytest.fixture(scope="session")
def expected_chunks(live: Live, engine: Engine, beat: None) -> dict[str, int]:
    """Chunks per file of an undisturbed ingest (each file once, in a tenant of its own)."""
    tenant = faults.new_tenant(engine, "faults-baseline")
    load = faults.Workload(live.api_url, faults.Traffic(timeout=30))
    for name in FILES:
        assert load.upload(tenant, CORPUS / name) is not None
    out = faults.settle(engine, load.job_ids(), timeout=240)
    assert out.status == {"succeeded": len(FILES)}, out.problems()
    return {str(j["effect_file"]): int(j["effect"]) for j in _with_files(engine, out)}


def _with_files(engine: Engine, out: faults.Outcome) -> list[dict[str, Any]]:
    from sqlalchemy import text

    rows = []
    with engine.connect() as conn:
        for job in out.jobs.values():
            filename = conn.execute(
                text("SELECT filename FROM documents WHERE id::text = :d"), {"d": job["payload"]["document_id"]}
            ).scalar_one()
            rows.append({**job, "effect_file": filename})
    return rows


@pytest.fixture
def scenario(live: Live, engine: Engine, beat: None) -> Iterator[Scenario]:
    """A scenario on a whole stack, healed after it whatever happened."""
    heal(live)
    s = Scenario(live, engine)
    try:
        yield s
    finally:
        heal(live, s.notes)
