"""Phase 1, submit throughput: POST /v1/probes against GET /healthz on the same API process under the load
generator's rounds, and against a bare ``send_task`` from this process; then the submit path one request at a
time (``bench.dispatch.submit_path``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from bench.common import Row
from bench.dispatch import profile, submit_path
from bench.dispatch.rig import SUBMIT_QUEUE, Rig

WATCH = ("api", "api_sys", "postgres", "redis", "loader", "redis_cmds", "pg_conns")
LEAN = "as Dispatcher.send: Celery's message built in this process, one LPUSH"
BARE = "send_task, kombu's own Redis transport"  # the baseline: bare Celery

# kind ("health" or "submit") -> per round: (the load generator's result, per-request deltas of WATCH)
Runs = dict[str, list[tuple[dict[str, Any], dict[str, float]]]]


def run(rig: Rig) -> None:
    a = rig.args
    runs = load_rounds(rig)
    sends = send_rates(rig, a.bare_seconds)
    if a.profile:
        profile.submit(rig)
    seq, parts = submit_path.sequential(rig, a.breakdown_samples)
    rig.purge(SUBMIT_QUEUE)
    report_load(rig, runs, sends[BARE][0])
    submit_path.report(rig, seq, parts)
    report_sends(rig, sends)


def load_rounds(rig: Rig) -> Runs:
    """``--rounds`` of GET /healthz then POST /v1/probes, ``--conns`` connections each."""
    a = rig.args
    health = {"method": "GET", "path": "/healthz"}
    timed = {"conns": a.conns, "warmup": a.warmup, "duration": a.duration}
    runs: Runs = {"health": [], "submit": []}
    for _ in range(a.rounds):
        for kind, spec in (("health", health), ("submit", rig.probe_spec(SUBMIT_QUEUE))):
            r, d = rig.load({**spec, **timed}, WATCH)
            runs[kind].append((r, {k: v / r["requests"] for k, v in d.items() if k != "wall"}))
        print(
            f"  round: healthz {runs['health'][-1][0]['rps']:,.0f} req/s, "
            f"probes {runs['submit'][-1][0]['rps']:,.0f} req/s",
            flush=True,
        )
    return runs


def send_rates(rig: Rig, seconds: float) -> dict[str, tuple[float, float, float]]:
    """The probe's task sent to the submit queue: as the Dispatcher sends it (Celery's message, built by
    ``jobs.broker.task_message``, in one ``LPUSH``), by ``send_task`` three ways, and by ``send_task`` on kombu's
    own Redis transport (bare Celery).

    Answers label -> (sends/s, ms of this process's CPU per send, Redis commands per send).
    """
    from protostar.constants import TaskName
    from protostar.jobs.broker import create_celery

    quiet = create_celery(rig.settings, role="api")
    quiet.conf.task_send_sent_event = False
    stock = create_celery(rig.settings, role="api")
    stock.conf.broker_transport = None  # kombu's own Redis transport: a redis.Redis built per publish
    variants = {
        "send_task (result backend subscribe + task-sent event)": (rig.api_celery, {}),
        "send_task, ignore_result=True": (rig.api_celery, {"ignore_result": True}),
        "send_task, ignore_result=True, task_send_sent_event=False": (quiet, {"ignore_result": True}),
        BARE: (stock, {}),
    }
    sends: dict[str, Callable[[], None]] = {LEAN: partial(lean_send, rig)}
    for label, (app, extra) in variants.items():

        def send(app: Any = app, extra: dict[str, Any] = extra) -> None:
            rig.send_like_dispatcher(
                app, TaskName.PROBE.value, SUBMIT_QUEUE, kwargs={"job_id": str(uuid.uuid4())}, **extra
            )

        sends[label] = send
    out = {}
    for label, send in sends.items():
        for _ in range(200):
            send()
        before = rig.snapshot("bench", "redis_cmds")
        n = 0
        while time.perf_counter() - before["wall"] < seconds:
            send()
            n += 1
        d = rig.delta(before, rig.snapshot("bench", "redis_cmds"))
        out[label] = (n / d["wall"], d["bench"] / n * 1000, d["redis_cmds"] / n)
    return out


def lean_send(rig: Rig) -> None:
    """The probe's task sent as ``Dispatcher.send`` sends it (without a status event)."""
    from protostar.constants import TaskName
    from protostar.jobs.broker import task_message
    from protostar.jobs.kinds import send_options

    job_id = str(uuid.uuid4())
    message = task_message(
        rig.api_celery,
        TaskName.PROBE.value,
        task_id=job_id,
        queue=SUBMIT_QUEUE,
        kwargs={"job_id": job_id},
        **send_options(rig.settings, SUBMIT_QUEUE),
    )
    rig.redis.lpush(SUBMIT_QUEUE, message)


def report_load(rig: Rig, runs: Runs, bare_rps: float) -> None:
    a = rig.args

    def mean(kind: str, key: str, scale: float = 1.0) -> float:
        xs = [r[key] if key in r else d[key] for r, d in runs[kind]]
        return sum(xs) / len(xs) * scale

    def spread(kind: str) -> str:
        xs = [r["rps"] for r, _ in runs[kind]]
        return f"{min(xs):,.0f}-{max(xs):,.0f}"

    s, h = mean("submit", "rps"), mean("health", "rps")
    rig.rows += [
        Row(
            f"Submit throughput, POST /v1/probes, {a.conns} conns (req/s; rounds {spread('submit')})",
            f"{s:,.0f}",
            f"GET /healthz {h:,.0f} (rounds {spread('health')})",
            f"{s / h:.3f}",
            "≥ 0.15",
        ),
        Row(
            "",
            "",
            f"bare send_task, kombu's own transport, 1 thread: {bare_rps:,.0f}",
            f"{s / bare_rps:.3f}",
        ),
        Row(
            "  latency under that load, p50 / p99 (ms)",
            f"{mean('submit', 'p50_ms'):.1f} / {mean('submit', 'p99_ms'):.1f}",
            f"healthz {mean('health', 'p50_ms'):.1f} / {mean('health', 'p99_ms'):.1f}",
            "",
        ),
    ]
    for key, label in (
        ("api", "API process"),
        ("api_sys", "  of which kernel (sys)"),
        ("postgres", "PostgreSQL"),
        ("redis", "Redis"),
        ("loader", "load generator"),
    ):
        sc, hc = mean("submit", key, 1000), mean("health", key, 1000)
        rig.rows.append(
            Row(
                f"  {label} CPU per request (ms)",
                f"{sc:.3f}",
                f"healthz {hc:.3f}",
                f"{sc / hc:.1f}x" if hc > 0.001 else "",
            )
        )
    for key, label, digits in (
        ("redis_cmds", "Redis commands per request", 1),
        ("pg_conns", "PostgreSQL connections opened per request", 2),
    ):
        rig.rows.append(
            Row(f"  {label}", f"{mean('submit', key):.{digits}f}", f"healthz {mean('health', key):.{digits}f}", "")
        )


def report_sends(rig: Rig, sends: dict[str, tuple[float, float, float]]) -> None:
    base = None
    for label, (rate, cpu_ms, cmds) in sends.items():
        base = base or rate
        rig.breakdown.append(
            Row(
                f"a send alone, 1 thread: {label}",
                f"{rate:,.0f} sends/s; {cpu_ms:.3f} ms client CPU; {cmds:.1f} Redis cmds",
                "",
                f"{rate / base:.2f}x rate",
            )
        )
