"""Dispatch benchmark: what Protostar's submit path and job shell cost next to bare Celery, in one run.

    .venv/bin/python -m bench.dispatch [--duration 5] [--samples 200] [--tasks 2000] [--profile]

Starts its own embedded Redis/PostgreSQL/S3 in a temp dir on free ports, applies migrations, runs ONE
uvicorn API process (``protostar.commands.api``) and, after the throughput phase, two workers with the
``ingest`` worker's pool flags (prefork, concurrency 2, child recycling): Protostar's worker app consuming
``chat`` only (so no ingest warm-up runs in its children) and a bare Celery app (``bench.dispatch.noop_app``).

1. Submit throughput: POST /v1/probes (queue ``summary``, whose worker is not started) vs GET /healthz on the
   same API process, driven by ``bench.dispatch.load`` (a separate process, raw asyncio keep-alive HTTP),
   and vs bare ``send_task`` from this process. Plus an in-process breakdown of ``Dispatcher.submit``.
2. Enqueue-to-start latency, sequential: POST /v1/probes (chat) → the job's ``started_at`` vs bare
   ``send_task("bench.stamp")`` → ``time.time()`` in the task body. Samples alternate between the two.
3. Worker CPU per task: N probe jobs (steps=1) vs N ``bench.noop`` tasks, each queued while its worker's
   consumer is cancelled, then consumed; CPU of the worker's main process + pool children (incl. reaped).

Results: a markdown table on stdout and in ``bench/results/dispatch.md``; process output in
``bench/results/dispatch.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT, MachineShare, Row, cpu_of, markdown, pct, publish, wait_idle
from bench.harness import bench_env, launched

SUBMIT_QUEUE = "summary"  # no worker consumes it while submit throughput is measured
RUN_QUEUE = "chat"  # the latency and CPU phases run probes here, on PROBE_WORKER
POOL_OF = "ingest"  # PROBE_WORKER runs with this worker's pool flags: prefork, concurrency 2, child recycling
PROBE_WORKER = "probe"  # a Protostar worker (protostar.worker.app) with those flags, consuming RUN_QUEUE only
BENCH_HOST = "127.0.0.1"


# --- small helpers ------------------------------------------------------------------------------------


class RawHttp:
    """One keep-alive HTTP/1.1 connection over a plain socket: the cheapest possible sequential client."""

    IDLE = 3.0  # uvicorn closes a keep-alive connection idle for 5 s: reconnect before that

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._connect()

    def _connect(self) -> None:
        self.sock = socket.create_connection((self.host, self.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.used = time.monotonic()

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
        if time.monotonic() - self.used > self.IDLE:
            self.sock.close()
            self._connect()
        try:
            return self._request(method, path, headers, body)
        finally:
            self.used = time.monotonic()

    def _request(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        while len(self.buf) < length:
            self._fill()
        data, self.buf = self.buf[:length], self.buf[length:]
        return int(head[9:12]), data

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the API closed the connection")
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()


# --- the benchmark ------------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    settings: Any
    stack: Any
    supervisor: Any
    admin_key: str
    rows: list[Row] = field(default_factory=list)
    breakdown: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        import redis

        from protostar.celery_app import create_celery
        from protostar.db.engine import make_engine

        self.redis = redis.Redis.from_url(self.settings.redis_url)
        self.engine = make_engine(self.settings, pool_size=2)
        self.api_celery = create_celery(self.settings, role="api")
        self.host = socket.gethostname()
        self.loader_pid: int | None = None

    # processes ------------------------------------------------------------------------------------------

    def pid(self, name: str) -> int | None:
        if name == "postgres":
            return self.stack.postgres.pid if self.stack.postgres else None
        if name == "redis":
            return self.stack.redis.pid if self.stack.redis else None
        if name == "bench":
            return os.getpid()
        if name == "loader":
            return self.loader_pid
        for n, proc in self.supervisor.procs:
            if n == name and proc.poll() is None:
                return int(proc.pid)
        return None

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

    def log_pg_connections(self) -> None:
        """Have the embedded PostgreSQL log each new connection, to count connections opened per request."""
        from sqlalchemy import text

        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ALTER SYSTEM SET log_connections = on"))
            conn.execute(text("SELECT pg_reload_conf()"))
        self._pg_log = self.stack.postgres.log_file
        before = self.pg_connections()
        self.engine.dispose()  # a new connection must show up in the log
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        if self.pg_connections() <= before:
            print(f"  note: {self._pg_log} logs no connections; 'connections opened' will read 0", flush=True)

    def pg_connections(self) -> int:
        return self._pg_log.read_bytes().count(b"connection authorized")

    @staticmethod
    def delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
        return {k: b[k] - a[k] for k in a}

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
        return {
            "method": "POST",
            "path": "/v1/probes",
            "headers": {"Authorization": f"Bearer {self.admin_key}"},
            "body": json.dumps({"queue": queue, "steps": 1}),
            **extra,
        }

    # phase 1 --------------------------------------------------------------------------------------------

    def phase_throughput(self) -> None:
        a = self.args
        watch = ("api", "api_sys", "postgres", "redis", "loader", "redis_cmds", "pg_conns")
        health = {"method": "GET", "path": "/healthz"}
        timed = {"conns": a.conns, "warmup": a.warmup, "duration": a.duration}
        runs: dict[str, list[tuple[dict[str, Any], dict[str, float]]]] = {"health": [], "submit": []}
        for _ in range(a.rounds):
            for kind, spec in (("health", health), ("submit", self.probe_spec(SUBMIT_QUEUE))):
                r, d = self.load({**spec, **timed}, watch)
                runs[kind].append((r, {k: v / r["requests"] for k, v in d.items() if k != "wall"}))
            print(
                f"  round: healthz {runs['health'][-1][0]['rps']:,.0f} req/s, "
                f"probes {runs['submit'][-1][0]['rps']:,.0f} req/s",
                flush=True,
            )

        sends = self.send_rates(a.bare_seconds)
        if a.profile:
            self.profile_submit()
        seq, parts = self.sequential(a.breakdown_samples)
        self.purge(SUBMIT_QUEUE)

        def mean(kind: str, key: str, scale: float = 1.0) -> float:
            xs = [r[key] if key in r else d[key] for r, d in runs[kind]]
            return sum(xs) / len(xs) * scale

        def spread(kind: str) -> str:
            xs = [r["rps"] for r, _ in runs[kind]]
            return f"{min(xs):,.0f}-{max(xs):,.0f}"

        s, h = mean("submit", "rps"), mean("health", "rps")
        bare_rps = sends["as Dispatcher.send (result backend subscribe + task-sent event)"][0]
        self.rows.append(
            Row(
                f"Submit throughput, POST /v1/probes, {a.conns} conns (req/s; rounds {spread('submit')})",
                f"{s:,.0f}",
                f"GET /healthz {h:,.0f} (rounds {spread('health')})",
                f"{s / h:.3f}",
                "≥ 0.15",
            )
        )
        self.rows.append(
            Row("", "", f"bare send_task as the Dispatcher sends, 1 thread: {bare_rps:,.0f}", f"{s / bare_rps:.3f}")
        )
        self.rows.append(
            Row(
                "  latency under that load, p50 / p99 (ms)",
                f"{mean('submit', 'p50_ms'):.1f} / {mean('submit', 'p99_ms'):.1f}",
                f"healthz {mean('health', 'p50_ms'):.1f} / {mean('health', 'p99_ms'):.1f}",
                "",
            )
        )
        for key, label in (
            ("api", "API process"),
            ("api_sys", "  of which kernel (sys)"),
            ("postgres", "PostgreSQL"),
            ("redis", "Redis"),
            ("loader", "load generator"),
        ):
            sc, hc = mean("submit", key, 1000), mean("health", key, 1000)
            self.rows.append(
                Row(
                    f"  {label} CPU per request (ms)",
                    f"{sc:.3f}",
                    f"healthz {hc:.3f}",
                    f"{sc / hc:.1f}x" if hc > 0.001 else "",
                )
            )
        self.rows.append(
            Row(
                "  Redis commands per request",
                f"{mean('submit', 'redis_cmds'):.1f}",
                f"healthz {mean('health', 'redis_cmds'):.1f}",
                "",
            )
        )
        self.rows.append(
            Row(
                "  PostgreSQL connections opened per request",
                f"{mean('submit', 'pg_conns'):.2f}",
                f"healthz {mean('health', 'pg_conns'):.2f}",
                "",
            )
        )
        self.breakdown.append(
            Row(
                "Sequential POST /v1/probes round trip, raw socket client (API idle)",
                f"p50 {seq['probe_p50']:.2f} / p99 {seq['probe_p99']:.2f}",
                f"GET /healthz p50 {seq['health_p50']:.2f} / p99 {seq['health_p99']:.2f}",
                f"+{seq['probe_p50'] - seq['health_p50']:.2f} ms",
            )
        )
        for label, values in parts.items():
            self.breakdown.append(Row(label, f"p50 {pct(values, 0.5):.3f} / p99 {pct(values, 0.99):.3f}", "", ""))
        base = None
        for label, (rate, cpu_ms, cmds) in sends.items():
            base = base or rate
            self.breakdown.append(
                Row(
                    f"send_task alone, 1 thread: {label}",
                    f"{rate:,.0f} sends/s; {cpu_ms:.3f} ms client CPU; {cmds:.1f} Redis cmds",
                    "",
                    f"{rate / base:.2f}x rate",
                )
            )

    def send_like_dispatcher(self, app: Any, name: str, queue: str, **kw: Any) -> None:
        from protostar.jobs.dispatch import time_limits

        app.send_task(
            name,
            task_id=str(uuid.uuid4()),
            queue=queue,
            expires=self.settings.task_expires,
            retry=False,
            **time_limits(self.settings, queue if queue != "bench" else RUN_QUEUE),
            **kw,
        )

    def send_rates(self, seconds: float) -> dict[str, tuple[float, float, float]]:
        """Bare ``send_task`` of the probe to the submit queue: as the Dispatcher sends it, and two lighter ways.

        Answers label -> (sends/s, ms of this process's CPU per send, Redis commands per send).
        """
        from protostar.celery_app import create_celery
        from protostar.constants import TaskName

        quiet = create_celery(self.settings, role="api")
        quiet.conf.task_send_sent_event = False
        variants = {
            "as Dispatcher.send (result backend subscribe + task-sent event)": (self.api_celery, {}),
            "ignore_result=True": (self.api_celery, {"ignore_result": True}),
            "ignore_result=True, task_send_sent_event=False": (quiet, {"ignore_result": True}),
        }
        out = {}
        for label, (app, extra) in variants.items():

            def send(app: Any = app, extra: dict[str, Any] = extra) -> None:
                self.send_like_dispatcher(
                    app, TaskName.PROBE.value, SUBMIT_QUEUE, kwargs={"job_id": str(uuid.uuid4())}, **extra
                )

            for _ in range(200):
                send()
            before = self.snapshot("bench", "redis_cmds")
            n = 0
            while time.perf_counter() - before["wall"] < seconds:
                send()
                n += 1
            d = self.delta(before, self.snapshot("bench", "redis_cmds"))
            out[label] = (n / d["wall"], d["bench"] / n * 1000, d["redis_cmds"] / n)
        return out

    def sequential(self, n: int) -> tuple[dict[str, float], dict[str, list[float]]]:
        """One at a time, interleaved so all see the same machine: GET /healthz, POST /v1/probes, and
        ``Dispatcher.submit``'s steps timed one by one in this process with the API's own kind of objects."""
        import redis

        from protostar.auth import ensure_tenant
        from protostar.constants import EventType, JobKind, JobStatus, TaskName
        from protostar.db.engine import make_engine, make_sessionmaker
        from protostar.jobs import repo
        from protostar.jobs.dispatch import Dispatcher
        from protostar.jobs.events import EventLog

        s = self.settings
        engine = make_engine(s, pool_size=5)
        sessions = make_sessionmaker(engine)
        client = redis.Redis.from_url(s.redis_url, socket_connect_timeout=1.0, socket_timeout=2.0)
        events = EventLog(client, ttl=s.events_ttl, maxlen=s.events_maxlen)
        dispatcher = Dispatcher(celery=self.api_celery, engine=engine, events=events, settings=s)
        with sessions.begin() as session:
            tenant_id = ensure_tenant(session, "default")
        http = RawHttp(BENCH_HOST, s.api_port)
        auth = {"Authorization": f"Bearer {self.admin_key}"}
        body = json.dumps({"queue": SUBMIT_QUEUE, "steps": 1}).encode()
        labels = (
            "  pool checkout (pre-ping SELECT 1) + INSERT jobs (ORM flush)",
            "  COMMIT (fsync)",
            "  send_task",
            "  XADD queued event + EXPIRE",
            "  mark_dispatched (2nd checkout + pre-ping, UPDATE, async commit)",
            "  session close",
        )
        whole = "In-process Dispatcher.submit steps, this process (ms)"
        cpu_label = "  CPU of this process for those steps (ms)"
        out: dict[str, list[float]] = {whole: [], cpu_label: [], **{label: [] for label in labels}}
        probe, health = [], []
        try:
            for i in range(n + 30):
                t = time.perf_counter()
                status, _ = http.request("GET", "/healthz", {})
                h = time.perf_counter() - t
                t = time.perf_counter()
                status2, _ = http.request("POST", "/v1/probes", auth, body)
                p = time.perf_counter() - t
                assert status == 200 and status2 == 202, (status, status2)
                cpu0 = time.process_time()
                ts = [time.perf_counter()]
                session = sessions()
                job = repo.create(
                    session,
                    tenant_id=tenant_id,
                    kind=JobKind.PROBE.value,
                    task_name=TaskName.PROBE.value,
                    queue=SUBMIT_QUEUE,
                    payload={"steps": 1, "sleep": 0.0, "fail": None},
                )
                ts.append(time.perf_counter())
                session.commit()
                ts.append(time.perf_counter())
                dispatcher.send(job)
                ts.append(time.perf_counter())
                events.publish(job.id, EventType.STATUS, {"status": JobStatus.QUEUED.value})
                ts.append(time.perf_counter())
                repo.mark_dispatched(engine, job_id=job.id)
                ts.append(time.perf_counter())
                session.close()
                ts.append(time.perf_counter())
                cpu1 = time.process_time()
                if i >= 30:
                    out[cpu_label].append((cpu1 - cpu0) * 1000)
                    health.append(h * 1000)
                    probe.append(p * 1000)
                    out[whole].append((ts[-1] - ts[0]) * 1000)
                    for label, a, b in zip(labels, ts, ts[1:], strict=False):
                        out[label].append((b - a) * 1000)
        finally:
            http.close()
            engine.dispose()
            client.close()
        seq = {
            "probe_p50": pct(probe, 0.5),
            "probe_p99": pct(probe, 0.99),
            "health_p50": pct(health, 0.5),
            "health_p99": pct(health, 0.99),
        }
        return seq, out

    def profile_submit(self) -> None:
        pyspy = Path(sys.executable).with_name("py-spy")
        if not pyspy.exists():
            self.notes.append("--profile: py-spy is not installed (.venv/bin/pip install py-spy); skipped")
            return
        out = RESULTS / "api-submit.folded"
        spy = subprocess.Popen(
            [
                str(pyspy),
                "record",
                "-p",
                str(self.pid("api")),
                "-d",
                str(int(self.args.duration) + 1),
                "-r",
                "250",
                "-f",
                "raw",
                "-o",
                str(out),
                "--gil",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            self.load(
                {
                    **self.probe_spec(SUBMIT_QUEUE),
                    "conns": self.args.conns,
                    "warmup": 0.5,
                    "duration": self.args.duration,
                },
                (),
            )
        finally:
            spy.wait(timeout=60)
        self.notes.append(f"py-spy profile of the API under submit load (not a measured round): {out}")
        print(summarize_folded(out), flush=True)

    def profile_worker(self, n: int = 500) -> None:
        """py-spy over the probe worker and its pool children while ``n`` more probes drain (not measured)."""
        from sqlalchemy import text

        pyspy = Path(sys.executable).with_name("py-spy")
        if not pyspy.exists():
            return
        with self.engine.connect() as conn:
            marker = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
        self.pause(PROBE_WORKER, RUN_QUEUE)
        time.sleep(0.3)
        self.load({**self.probe_spec(RUN_QUEUE), "conns": 16, "count": n}, ())
        out = RESULTS / "worker-probe.folded"
        spy = subprocess.Popen(
            [
                str(pyspy),
                "record",
                "-p",
                str(self.pid(f"worker-{PROBE_WORKER}")),
                "--subprocesses",
                "--gil",
                "-r",
                "250",
                "-f",
                "raw",
                "-o",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)
        self.resume(PROBE_WORKER, RUN_QUEUE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with self.engine.connect() as conn:
                done = conn.execute(
                    text("SELECT count(*) FROM jobs WHERE queue = :q AND created_at >= :m AND finished_at IS NOT NULL"),
                    {"q": RUN_QUEUE, "m": marker},
                ).scalar_one()
            if done >= n:
                break
            time.sleep(0.1)
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
        self.notes.append(f"py-spy profile of the probe worker draining {n} probes (not measured): {out}")
        print(summarize_folded(out), flush=True)

    def purge(self, queue: str) -> None:
        with self.api_celery.connection_for_write() as conn:
            conn.default_channel.queue_purge(queue)

    # phase 2 --------------------------------------------------------------------------------------------

    def start_workers(self) -> None:
        from protostar import commands

        # Protostar's worker app with the ingest worker's pool flags, on a queue without the ingest child warm-up
        # (parsers + embedding model per pool child), so that only the job shell is measured.
        argv = commands.worker(self.settings, POOL_OF)
        argv[argv.index("--hostname") + 1] = f"{PROBE_WORKER}@%h"
        argv[argv.index("--queues") + 1] = RUN_QUEUE
        self.supervisor.start(f"worker-{PROBE_WORKER}", argv)
        argv = commands.worker(self.settings, POOL_OF)  # the same pool flags, the bare app and its queue
        argv[argv.index("-A") + 1] = "bench.dispatch.noop_app"
        argv[argv.index("--hostname") + 1] = "bench@%h"
        argv[argv.index("--queues") + 1] = "bench"
        self.supervisor.start("worker-bench", argv)
        from bench.dispatch.noop_app import app

        self.ctl = app
        deadline = time.monotonic() + 60
        want = {f"{PROBE_WORKER}@{self.host}", f"bench@{self.host}"}
        while time.monotonic() < deadline:
            replies = app.control.ping(destination=list(want), timeout=0.5)
            if {name for r in replies for name in r} >= want:
                wait_idle(self.pid(f"worker-{PROBE_WORKER}"), "the probe worker")
                wait_idle(self.pid("api"), "the API")
                return
        raise RuntimeError(f"workers did not answer ping within 60 s (see {RESULTS / 'dispatch.log'})")

    def phase_latency(self) -> None:
        n, warm = self.args.samples, 20
        http = RawHttp(BENCH_HOST, self.settings.api_port)
        auth = {"Authorization": f"Bearer {self.admin_key}"}
        body = json.dumps({"queue": RUN_QUEUE, "steps": 1}).encode()
        sent: dict[str, tuple[float, float, float]] = {}  # job id -> (t0, POST answered, running seen)
        bare, bare_seen = [], []
        try:
            for i in range(n + warm):
                # Protostar: POST, then follow the job's event stream in Redis until done.
                t0 = time.time()
                status, data = http.request("POST", "/v1/probes", auth, body)
                t_resp = time.time()
                assert status == 202, data
                job_id = json.loads(data)["job_id"]
                t_run = self.follow(job_id)
                if i >= warm:
                    sent[job_id] = (t0, t_resp, t_run)
                # Bare Celery: send, then wait for the body's own time.time().
                key = f"bench:stamp:{i}"
                t0 = time.time()
                self.send_like_dispatcher(self.ctl, "bench.stamp", "bench", args=[key])
                got = self.redis.blpop([key], timeout=30)
                t_seen = time.time()
                if got is None:
                    raise RuntimeError("bench.stamp did not run within 30 s")
                if i >= warm:
                    bare.append((float(got[1]) - t0) * 1000)
                    bare_seen.append((t_seen - t0) * 1000)
        finally:
            http.close()

        from sqlalchemy import text

        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT id::text, extract(epoch from created_at), extract(epoch from dispatched_at), "
                    "extract(epoch from started_at) FROM jobs WHERE id::text = ANY(:ids)"
                ),
                {"ids": list(sent)},
            ).all()
        post_start, created_start, post_running, post_rt, created_disp = [], [], [], [], []
        for jid, created, dispatched, started in rows:
            t0, t_resp, t_run = sent[jid]
            post_start.append((float(started) - t0) * 1000)
            created_start.append((float(started) - float(created)) * 1000)
            post_running.append((t_run - t0) * 1000)
            post_rt.append((t_resp - t0) * 1000)
            created_disp.append((float(dispatched) - float(created)) * 1000)

        p = lambda xs: f"{pct(xs, 0.5):.2f} / {pct(xs, 0.99):.2f}"  # noqa: E731
        added = pct(post_start, 0.5) - pct(bare, 0.5)
        self.rows.append(
            Row(
                f"Enqueue→start p50 / p99 (ms), POST /v1/probes → jobs.started_at, n={len(post_start)}",
                p(post_start),
                f"bare send_task → task body {p(bare)}",
                f"+{added:.2f} ms p50",
                "≤ +2 ms",
            )
        )
        self.rows.append(
            Row("  of which POST round trip (client)", p(post_rt), "", f"{pct(post_rt, 0.5) / pct(bare, 0.5):.1f}x")
        )
        self.rows.append(Row("  jobs.created_at → started_at (DB clock)", p(created_start), "", ""))
        self.rows.append(Row("  jobs.created_at → dispatched_at (DB clock)", p(created_disp), "", ""))
        self.rows.append(
            Row(
                "POST → `running` event seen by client (XREAD) p50 / p99 (ms)",
                p(post_running),
                f"bare send → stamp seen (BLPOP) {p(bare_seen)}",
                f"+{pct(post_running, 0.5) - pct(bare_seen, 0.5):.2f} ms p50",
            )
        )

    def follow(self, job_id: str, timeout: float = 30.0) -> float:
        """Read the job's event stream until ``done``; answer when ``status: running`` was seen."""
        key, last, t_run = f"protostar:events:{job_id}", "0-0", None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self.redis.xread({key: last}, block=1000)
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id
                    kind = fields[b"type"]
                    if kind == b"status" and t_run is None and json.loads(fields[b"data"])["status"] == "running":
                        t_run = time.time()
                    if kind == b"done":
                        if t_run is None:
                            raise RuntimeError(f"probe {job_id} ended without running: {fields}")
                        return t_run
        raise RuntimeError(f"probe {job_id} did not finish within {timeout} s")

    # phase 3 --------------------------------------------------------------------------------------------

    def pause(self, worker: str, queue: str) -> None:
        replies = self.ctl.control.cancel_consumer(queue, destination=[f"{worker}@{self.host}"], reply=True)
        if not replies:
            raise RuntimeError(f"{worker} did not confirm cancel_consumer({queue})")

    def resume(self, worker: str, queue: str) -> None:
        self.ctl.control.add_consumer(queue, destination=[f"{worker}@{self.host}"], reply=True)

    def measure_worker(
        self, worker: str, queue: str, enqueue: Callable[[], None], done: Callable[[], bool]
    ) -> dict[str, float]:
        self.pause(worker, queue)
        time.sleep(0.3)
        enqueue()
        watch = (f"worker-{worker}", "postgres", "redis", "redis_cmds", "pg_conns")
        before = self.snapshot(*watch)
        self.resume(worker, queue)
        deadline = time.monotonic() + 120
        while not done():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{worker}: tasks did not finish within 120 s")
            time.sleep(0.02)
        finished = time.perf_counter()
        time.sleep(0.3)  # the last acks and task events leave the worker
        d = self.delta(before, self.snapshot(*watch))
        d["wall"] = finished - before["wall"]
        d["worker"] = d.pop(f"worker-{worker}")
        return d

    def phase_cpu(self) -> None:
        from sqlalchemy import text

        n = self.args.tasks
        with self.engine.connect() as conn:
            marker = conn.execute(text("SELECT clock_timestamp()")).scalar_one()

        def submit_probes() -> None:
            r, _ = self.load({**self.probe_spec(RUN_QUEUE), "conns": 16, "count": n}, ())
            assert r["requests"] == n, r

        def probes_done() -> bool:
            with self.engine.connect() as conn:
                count = conn.execute(
                    text(
                        "SELECT count(*) FROM jobs WHERE queue = :q AND created_at >= :m "
                        "AND status IN ('succeeded', 'failed', 'cancelled')"
                    ),
                    {"q": RUN_QUEUE, "m": marker},
                ).scalar_one()
            return bool(count >= n)

        def send_noops() -> None:
            for _ in range(n):
                self.send_like_dispatcher(self.ctl, "bench.noop", "bench")

        def noops_done() -> bool:
            pipe = self.redis.pipeline(transaction=False)
            pipe.llen("bench")
            pipe.hlen("unacked")
            return pipe.execute() == [0, 0]

        proto = self.measure_worker(PROBE_WORKER, RUN_QUEUE, submit_probes, probes_done)
        bare = self.measure_worker("bench", "bench", send_noops, noops_done)
        if self.args.profile:
            self.profile_worker()
        with self.engine.connect() as conn:
            failed = conn.execute(
                text("SELECT count(*) FROM jobs WHERE queue = :q AND created_at >= :m AND status <> 'succeeded'"),
                {"q": RUN_QUEUE, "m": marker},
            ).scalar_one()
        if failed:
            self.notes.append(f"{failed} of the {n} CPU-phase probes did not succeed")

        per = lambda d, k: d[k] / n * 1000  # noqa: E731
        self.rows.append(
            Row(
                f"Worker CPU per task, prefork c=2 (ingest worker's flags), probe steps=1 (ms), n={n}",
                f"{per(proto, 'worker'):.2f}",
                f"bare no-op {per(bare, 'worker'):.2f}",
                f"{proto['worker'] / bare['worker']:.1f}x",
            )
        )
        svc_p = per(proto, "postgres") + per(proto, "redis")
        svc_b = per(bare, "postgres") + per(bare, "redis")
        self.rows.append(
            Row(
                "  PostgreSQL + Redis CPU per task while the worker drains (ms)",
                f"{per(proto, 'postgres'):.2f} + {per(proto, 'redis'):.2f}",
                f"{per(bare, 'postgres'):.2f} + {per(bare, 'redis'):.2f}",
                f"{svc_p / svc_b:.1f}x" if svc_b > 0.001 else "",
            )
        )
        self.rows.append(
            Row(
                "  Redis commands / PostgreSQL connections opened, per task",
                f"{proto['redis_cmds'] / n:.1f} / {proto['pg_conns'] / n:.3f}",
                f"{bare['redis_cmds'] / n:.1f} / {bare['pg_conns'] / n:.3f}",
                "",
            )
        )
        self.rows.append(
            Row(
                "  Worker drain rate (tasks/s)",
                f"{n / proto['wall']:,.0f}",
                f"bare no-op {n / bare['wall']:,.0f}",
                f"{(n / proto['wall']) / (n / bare['wall']):.2f}",
            )
        )

    # report ---------------------------------------------------------------------------------------------

    def report(self, elapsed: float) -> str:
        a, s = self.args, self.settings
        run = (
            f"duration {a.duration} s x {a.rounds} rounds, {a.conns} conns · {a.samples} latency samples · "
            f"{a.tasks} tasks · log level {s.log_level}"
            + (f" · API factory {a.api_factory} (EXP={os.environ.get('EXP', '')})" if a.api_factory else "")
        )
        breakdown = [
            "Submit path, sequential, no load (ms):",
            "",
            "| step | time | baseline | added |",
            "| --- | --- | --- | --- |",
            *[f"| {r.metric} | {r.value} | {r.baseline} | {r.ratio} |" for r in self.breakdown],
        ]
        return markdown("dispatch", run, elapsed, self.rows, ratio="ratio / added", extra=breakdown, notes=self.notes)


def summarize_folded(path: Path, top: int = 30) -> str:
    """Inclusive share of samples per function (file:function), from py-spy's raw (folded) output."""
    total = 0
    incl: dict[str, int] = {}
    own: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        c = int(count)
        total += c
        frames = [
            f.rsplit(" (", 1)[0] + " (" + f.rsplit(" (", 1)[1].split(":")[0] + ")" if " (" in f else f
            for f in stack.split(";")
        ]
        for f in set(frames):
            incl[f] = incl.get(f, 0) + c
        own[frames[-1]] = own.get(frames[-1], 0) + c
    out = [f"py-spy: {total} samples; inclusive top {top}:"]
    for f, c in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {100 * c / total:5.1f}%  {f}")
    out.append("self top 15:")
    for f, c in sorted(own.items(), key=lambda kv: -kv[1])[:15]:
        out.append(f"  {100 * c / total:5.1f}%  {f}")
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.dispatch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured per load round")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each measured window")
    p.add_argument("--rounds", type=int, default=2, help="healthz/probes load rounds (alternating)")
    p.add_argument("--conns", type=int, default=64, help="concurrent keep-alive connections")
    p.add_argument("--bare-seconds", type=float, default=2.0, help="seconds per bare send_task variant")
    p.add_argument("--breakdown-samples", type=int, default=300, help="sequential submit-path samples")
    p.add_argument("--samples", type=int, default=200, help="sequential latency samples per path")
    p.add_argument("--tasks", type=int, default=2000, help="tasks per path in the worker CPU phase")
    p.add_argument("--log-level", default="INFO", help="PROTOSTAR_LOG_LEVEL of the API and workers")
    p.add_argument("--profile", action="store_true", help="also py-spy the API under submit load (extra round)")
    p.add_argument("--api-factory", help="module:factory to serve instead of protostar.api.app:create_app")
    p.add_argument("--phases", default="123", help="which phases to run (for iterating): any of 1, 2, 3")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    os.chdir(ROOT)

    def env(data_dir: Path) -> dict[str, str]:
        return bench_env(data_dir, args.log_level) | {"PROTOSTAR_INGEST_CONCURRENCY": "2"}

    print("starting embedded services...", flush=True)
    with launched(env, RESULTS / "dispatch.log", api_factory=args.api_factory) as system:
        bench = Bench(args, system.settings, system.stack, system.supervisor, system.admin_key)
        wait_idle(bench.pid("api"), "the API")
        bench.log_pg_connections()

        machine = MachineShare()
        if "1" in args.phases:
            print("1/3 submit throughput (no worker consumes the submit queue)...", flush=True)
            bench.phase_throughput()
        if "2" in args.phases or "3" in args.phases:
            bench.start_workers()
        if "2" in args.phases:
            print("2/3 enqueue-to-start latency...", flush=True)
            bench.phase_latency()
        if "3" in args.phases:
            print("3/3 worker CPU per task...", flush=True)
            bench.phase_cpu()
        bench.notes.append(machine.describe())

        text = bench.report(time.perf_counter() - started)
        publish("dispatch", text)
        return 0


if __name__ == "__main__":
    sys.exit(main())
