"""The submit path one request at a time (phase 1's breakdown): GET /healthz and POST /v1/probes over a raw
socket, interleaved with ``Dispatcher.submit``'s steps timed one by one in this process with the API's own
kind of objects, so all three see the same machine."""

from __future__ import annotations

import json
import time
from typing import Any

from bench.common import Row, pct
from bench.dispatch.rawhttp import RawHttp
from bench.dispatch.rig import BENCH_HOST, SUBMIT_QUEUE, Rig

STEPS = (
    "  pool checkout + protostar_submit_job (lock, count, INSERT, async COMMIT; sync COMMIT after: one message)",
    "  the LLM's state read (GET: the queued event's note for a chat or summary job)",
    "  the send: queued event (XADD, EXPIRE) and the task's message (LPUSH), one pipeline",
)
WHOLE = "In-process Dispatcher.submit steps (sent at once), this process (ms)"
CPU = "  CPU of this process for those steps (ms)"
CALL = "In-process Dispatcher.submit(None, …) as the probe route calls it, sent at once (ms)"
CALL_CPU = "  CPU of this process for that call (ms)"
WARM = 30  # rounds before the samples count


class InProcess:
    """``Dispatcher.submit``'s steps as the API takes them, each timed (its own engine, Redis client, tenant)."""

    def __init__(self, rig: Rig) -> None:
        import redis

        from protostar.auth import ensure_tenant
        from protostar.db.engine import make_engine, make_sessionmaker
        from protostar.jobs.dispatch import Dispatcher
        from protostar.jobs.events import EventLog

        # The default tenant's cap raised out of reach here too, so that every submit is sent at once even with
        # --turns (which keeps the caps: no worker consumes the submit queue, so a tenant past its cap waits).
        s = rig.settings.model_copy(update={"tenant_inflight_summary": 10**9})
        self.settings = s
        self.engine = make_engine(s, pool_size=5)
        self.sessions = make_sessionmaker(self.engine)
        self.client = redis.Redis.from_url(s.redis_url, socket_connect_timeout=1.0, socket_timeout=2.0)
        self.events = EventLog(self.client, ttl=s.events_ttl, maxlen=s.events_maxlen)
        self.dispatcher = Dispatcher(celery=rig.api_celery, engine=self.engine, events=self.events, settings=s)
        with self.sessions.begin() as session:
            self.tenant_id = ensure_tenant(session, "default")

    def submit(self) -> tuple[list[float], float]:
        """One submit, as ``Dispatcher.submit`` takes it without a session: ``time.perf_counter()`` before the
        first step and after each of :data:`STEPS`, and the CPU seconds this process spent on them."""
        import uuid

        from protostar.constants import JobKind, TaskName
        from protostar.jobs import repo, turns
        from protostar.runtime.llm_state import waiting_note

        job_id = uuid.uuid4()
        cpu0 = time.process_time()
        ts = [time.perf_counter()]
        with repo.autocommit(self.dispatcher.engine) as conn:
            inserted = turns.insert(
                conn,
                self.settings,
                job_id=job_id,
                tenant_id=self.tenant_id,
                kind=JobKind.PROBE.value,
                task_name=TaskName.PROBE.value,
                queue=SUBMIT_QUEUE,
                payload={"steps": 1, "sleep": 0.0, "fail": None},
                quota=True,
                alone=True,
            )
        ts.append(time.perf_counter())
        assert inserted.admission.send
        job = turns.Released(job_id, TaskName.PROBE.value, SUBMIT_QUEUE)
        status = {"status": "queued", **(waiting_note(self.client) or {})}
        ts.append(time.perf_counter())
        self.dispatcher.send(job, status)
        ts.append(time.perf_counter())
        return ts, time.process_time() - cpu0

    def call(self) -> tuple[float, float]:
        """One whole ``Dispatcher.submit(None, …)``: seconds, and CPU seconds of this process."""
        from protostar.constants import JobKind, Queue

        cpu0, t0 = time.process_time(), time.perf_counter()
        self.dispatcher.submit(
            None,
            kind=JobKind.PROBE,
            tenant_id=self.tenant_id,
            payload={"steps": 1, "sleep": 0.0, "fail": None},
            queue=Queue(SUBMIT_QUEUE),
        )
        return time.perf_counter() - t0, time.process_time() - cpu0

    def close(self) -> None:
        self.engine.dispose()
        self.client.close()


def sequential(rig: Rig, n: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """``n`` rounds (after :data:`WARM`) of GET /healthz, POST /v1/probes and an in-process submit; answers the
    round trips' p50/p99 and the in-process samples (ms) by label."""
    in_process = InProcess(rig)
    http = RawHttp(BENCH_HOST, rig.settings.api_port)
    auth = {"Authorization": f"Bearer {rig.load_keys()[0]}"}  # an ordinary key, as a caller's
    body = json.dumps({"queue": SUBMIT_QUEUE, "steps": 1}).encode()
    out: dict[str, list[float]] = {WHOLE: [], CPU: [], **{label: [] for label in STEPS}, CALL: [], CALL_CPU: []}
    probe, health = [], []
    try:
        for i in range(n + WARM):
            h, status = _timed(http, "GET", "/healthz", {})
            p, status2 = _timed(http, "POST", "/v1/probes", auth, body)
            assert status == 200 and status2 == 202, (status, status2)
            ts, cpu = in_process.submit()
            whole, call_cpu = in_process.call()
            if i >= WARM:
                out[CALL].append(whole * 1000)
                out[CALL_CPU].append(call_cpu * 1000)
                out[CPU].append(cpu * 1000)
                health.append(h * 1000)
                probe.append(p * 1000)
                out[WHOLE].append((ts[-1] - ts[0]) * 1000)
                for label, a, b in zip(STEPS, ts, ts[1:], strict=False):
                    out[label].append((b - a) * 1000)
    finally:
        http.close()
        in_process.close()
    seq = {
        "probe_p50": pct(probe, 0.5),
        "probe_p99": pct(probe, 0.99),
        "health_p50": pct(health, 0.5),
        "health_p99": pct(health, 0.99),
    }
    return seq, out


def _timed(http: RawHttp, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[float, Any]:
    """Seconds one request took, and its status."""
    t = time.perf_counter()
    status, _ = http.request(method, path, headers, body)
    return time.perf_counter() - t, status


def report(rig: Rig, seq: dict[str, float], parts: dict[str, list[float]]) -> None:
    rig.breakdown.append(
        Row(
            "Sequential POST /v1/probes round trip, raw socket client (API idle)",
            f"p50 {seq['probe_p50']:.2f} / p99 {seq['probe_p99']:.2f}",
            f"GET /healthz p50 {seq['health_p50']:.2f} / p99 {seq['health_p99']:.2f}",
            f"+{seq['probe_p50'] - seq['health_p50']:.2f} ms",
        )
    )
    for label, values in parts.items():
        rig.breakdown.append(Row(label, f"p50 {pct(values, 0.5):.3f} / p99 {pct(values, 0.99):.3f}", "", ""))
