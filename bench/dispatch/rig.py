"""What every phase of the dispatch benchmark works with: the running system's processes and their CPU
snapshots, the load generator (``bench.dispatch.load``, a separate process), ``send_task`` with the options
every send of the Dispatcher carries (the bare baselines), and the two workers (Protostar's probe worker and
the bare ``bench.dispatch.noop_app``), paused and resumed. The phases add their rows to :attr:`Rig.rows`,
:attr:`Rig.breakdown` and :attr:`Rig.notes`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from bench.common import RESULTS, Row, cpu_of, wait_idle
from bench.harness import System

SUBMIT_QUEUE = "summary"  # no worker consumes it while submit throughput is measured
RUN_QUEUE = "chat"  # the latency and CPU phases run probes here, on PROBE_WORKER
POOL_OF = "ingest"  # PROBE_WORKER runs with this worker's pool flags: prefork, concurrency 2, child recycling
PROBE_WORKER = "probe"  # a Protostar worker (protostar.worker.app) with those flags, consuming RUN_QUEUE only
BARE_QUEUE = "bench"  # noop_app.BENCH_QUEUE (not imported here: that module builds its app), and its worker
BENCH_HOST = "127.0.0.1"
LOAD_TENANTS = 64
"""The probes under load come from this many tenants, one admin key each, taken in turn request by request:
each tenant's jobs in flight then stay near what its cap allows in production (a few dozen, not the whole
load's thousands), and so do the counts its submits and turns make (``jobs.turns``; their cost grows with
them). The keys are ordinary ones, checked as a caller's are (the bootstrap key skips the revocation look-up);
the sequential phases send with the first of them."""


@dataclass
class Rig:
    args: argparse.Namespace
    system: System
    rows: list[Row] = field(default_factory=list)
    breakdown: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        from protostar.jobs.broker import create_celery

        system = self.system
        self.settings, self.redis, self.engine, self.host = system.settings, system.redis, system.engine, system.host
        self.admin_key = system.admin_key
        self.api_celery = create_celery(self.settings, role="api")
        self.ctl: Any = None  # the bare app, to control both workers (start_workers)
        self.loader_pid: int | None = None
        self._keys: list[str] = []

    # processes ------------------------------------------------------------------------------------------

    def pid(self, name: str) -> int | None:
        stack = self.system.stack
        if name == "postgres":
            return stack.postgres.pid if stack.postgres else None
        if name == "redis":
            return stack.redis.pid if stack.redis else None
        if name == "bench":
            return os.getpid()
        if name == "loader":
            return self.loader_pid
        return self.system.pid(name)

    def snapshot(self, *names: str) -> dict[str, float]:
        snap = {n: cpu_of(self.pid(n)) for n in names if n not in ("redis_cmds", "pg_conns", "bench", "api_sys")}
        if "api_sys" in names:
            snap["api_sys"] = cpu_of(self.pid("api"), system_only=True)
        if "bench" in names:
            snap["bench"] = time.process_time()  # this process alone: its children are the system under test
        if "pg_conns" in names:
            snap["pg_conns"] = float(self.pg_connections())
        if "redis_cmds" in names:
            snap["redis_cmds"] = float(self.redis.info("stats")["total_commands_processed"]) - 1
        snap["wall"] = time.perf_counter()
        return snap

    @staticmethod
    def delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
        return {k: b[k] - a[k] for k in a}

    def log_pg_connections(self) -> None:
        """Have the embedded PostgreSQL log each new connection, to count connections opened per request."""
        from sqlalchemy import text

        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ALTER SYSTEM SET log_connections = on"))
            conn.execute(text("SELECT pg_reload_conf()"))
        self._pg_log = self.system.stack.postgres.log_file
        before = self.pg_connections()
        self.engine.dispose()  # a new connection must show up in the log
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        if self.pg_connections() <= before:
            print(f"  note: {self._pg_log} logs no connections; 'connections opened' will read 0", flush=True)

    def pg_connections(self) -> int:
        return self._pg_log.read_bytes().count(b"connection authorized")

    def db_clock(self) -> Any:
        """PostgreSQL's ``clock_timestamp()``: a marker for the jobs created after it (:meth:`run_jobs`)."""
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return conn.execute(text("SELECT clock_timestamp()")).scalar_one()

    def run_jobs(self, since: Any, where: str) -> int:
        """How many jobs on RUN_QUEUE created since the marker ``since`` match the SQL condition ``where``."""
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    text(f"SELECT count(*) FROM jobs WHERE queue = :q AND created_at >= :m AND {where}"),
                    {"q": RUN_QUEUE, "m": since},
                ).scalar_one()
            )

    # HTTP load ------------------------------------------------------------------------------------------

    def load(self, spec: dict[str, Any], watch: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, float]]:
        spec = {"host": BENCH_HOST, "port": self.settings.api_port, **spec}
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.dispatch.load", json.dumps(spec)], stdout=subprocess.PIPE, text=True
        )
        self.loader_pid = proc.pid
        before = after = None
        result: dict[str, Any] = {}
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.strip()
            if line == "start":
                before = self.snapshot(*watch)
            elif line == "stop":
                after = self.snapshot(*watch)
            elif line.startswith("{"):
                result = json.loads(line)
        if proc.wait() != 0 or before is None or after is None:
            raise RuntimeError(f"the load generator failed (exit {proc.returncode})")
        bad = {k: v for k, v in result["statuses"].items() if not k.startswith("2")}
        if bad:
            raise RuntimeError(f"non-2xx answers under load: {bad}")
        return result, self.delta(before, after)

    def probe_spec(self, queue: str, **extra: Any) -> dict[str, Any]:
        """POST /v1/probes to ``queue``: from :data:`LOAD_TENANTS` tenants, or with ``--turns`` from the
        admin's tenant alone (its jobs wait their turns behind its cap)."""
        return {
            "method": "POST",
            "path": "/v1/probes",
            "headers": {"Authorization": f"Bearer {self.admin_key}"},
            "body": json.dumps({"queue": queue, "steps": 1}),
            **({} if self.args.turns else {"keys": self.load_keys()}),
            **extra,
        }

    def load_keys(self) -> list[str]:
        """An admin key of each of :data:`LOAD_TENANTS` tenants of their own (made once)."""
        if not self._keys:
            from sqlalchemy.orm import Session

            from protostar.auth import create_key

            with Session(self.engine) as session, session.begin():
                self._keys = [create_key(session, tenant=f"bench-load-{i}", admin=True) for i in range(LOAD_TENANTS)]
        return self._keys

    # Celery ---------------------------------------------------------------------------------------------

    def send_like_dispatcher(self, app: Any, name: str, queue: str, **kw: Any) -> None:
        """``send_task`` with the expiry and time limits a Dispatcher's send carries (the bare baselines)."""
        from protostar.jobs.kinds import send_options

        app.send_task(
            name,
            task_id=str(uuid.uuid4()),
            queue=queue,
            retry=False,
            **send_options(self.settings, queue if queue != BARE_QUEUE else RUN_QUEUE),
            **kw,
        )

    def purge(self, queue: str) -> None:
        with self.api_celery.connection_for_write() as conn:
            conn.default_channel.queue_purge(queue)

    def start_workers(self) -> None:
        from protostar import commands

        # Protostar's worker app with the ingest worker's pool flags, on a queue without the ingest child warm-up
        # (parsers + embedding model per pool child), so that only the job shell is measured.
        argv = commands.worker(self.settings, POOL_OF)
        argv[argv.index("--hostname") + 1] = f"{PROBE_WORKER}@%h"
        argv[argv.index("--queues") + 1] = RUN_QUEUE
        self.system.supervisor.start(f"worker-{PROBE_WORKER}", argv)
        argv = commands.worker(self.settings, POOL_OF)  # the same pool flags, the bare app and its queue
        argv[argv.index("-A") + 1] = "bench.dispatch.noop_app"
        argv[argv.index("--hostname") + 1] = f"{BARE_QUEUE}@%h"
        argv[argv.index("--queues") + 1] = BARE_QUEUE
        self.system.supervisor.start(f"worker-{BARE_QUEUE}", argv)
        from bench.dispatch.noop_app import app

        self.ctl = app
        deadline = time.monotonic() + 60
        want = {f"{PROBE_WORKER}@{self.host}", f"{BARE_QUEUE}@{self.host}"}
        while time.monotonic() < deadline:
            replies = app.control.ping(destination=list(want), timeout=0.5)
            if {name for r in replies for name in r} >= want:
                wait_idle(self.pid(f"worker-{PROBE_WORKER}"), "the probe worker")
                wait_idle(self.pid("api"), "the API")
                return
        raise RuntimeError(f"workers did not answer ping within 60 s (see {RESULTS / 'dispatch.log'})")

    def pause(self, worker: str, queue: str) -> None:
        replies = self.ctl.control.cancel_consumer(queue, destination=[f"{worker}@{self.host}"], reply=True)
        if not replies:
            raise RuntimeError(f"{worker} did not confirm cancel_consumer({queue})")

    def resume(self, worker: str, queue: str) -> None:
        self.ctl.control.add_consumer(queue, destination=[f"{worker}@{self.host}"], reply=True)
