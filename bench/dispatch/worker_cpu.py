"""Phase 3, worker CPU per task: ``--tasks`` probes (steps=1) and as many bare ``bench.noop`` tasks, each
queued while its worker's consumer is cancelled, then drained; CPU of the worker's main process and pool
children (reaped ones too), PostgreSQL and Redis, Redis commands, PostgreSQL connections, drain rate."""

from __future__ import annotations

import time
from collections.abc import Callable

from bench.common import Row
from bench.dispatch import profile
from bench.dispatch.rig import BARE_QUEUE, PROBE_WORKER, RUN_QUEUE, Rig

ENDED = "status IN ('succeeded', 'failed', 'cancelled')"


def run(rig: Rig) -> None:
    n = rig.args.tasks
    marker = rig.db_clock()

    def submit_probes() -> None:
        r, _ = rig.load({**rig.probe_spec(RUN_QUEUE), "conns": 16, "count": n}, ())
        assert r["requests"] == n, r

    def send_noops() -> None:
        for _ in range(n):
            rig.send_like_dispatcher(rig.ctl, "bench.noop", BARE_QUEUE)

    def noops_done() -> bool:
        pipe = rig.redis.pipeline(transaction=False)
        pipe.llen(BARE_QUEUE)
        pipe.hlen("unacked")
        return pipe.execute() == [0, 0]

    proto = drain(rig, PROBE_WORKER, RUN_QUEUE, submit_probes, lambda: rig.run_jobs(marker, ENDED) >= n)
    bare = drain(rig, BARE_QUEUE, BARE_QUEUE, send_noops, noops_done)
    if rig.args.profile:
        profile.worker(rig)
    failed = rig.run_jobs(marker, "status <> 'succeeded'")
    if failed:
        rig.notes.append(f"{failed} of the {n} CPU-phase probes did not succeed")
    report(rig, n, proto, bare)


def drain(rig: Rig, worker: str, queue: str, enqueue: Callable[[], None], done: Callable[[], bool]) -> dict[str, float]:
    """Queue the tasks while ``worker`` does not consume, then let it drain them; the CPU and counters spent."""
    rig.pause(worker, queue)
    time.sleep(0.3)
    enqueue()
    watch = (f"worker-{worker}", "postgres", "redis", "redis_cmds", "pg_conns")
    before = rig.snapshot(*watch)
    rig.resume(worker, queue)
    deadline = time.monotonic() + 120
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{worker}: tasks did not finish within 120 s")
        time.sleep(0.02)
    finished = time.perf_counter()
    time.sleep(0.3)  # the last acks and task events leave the worker
    d = rig.delta(before, rig.snapshot(*watch))
    d["wall"] = finished - before["wall"]
    d["worker"] = d.pop(f"worker-{worker}")
    return d


def report(rig: Rig, n: int, proto: dict[str, float], bare: dict[str, float]) -> None:
    def per(d: dict[str, float], k: str) -> float:
        return d[k] / n * 1000

    svc_p = per(proto, "postgres") + per(proto, "redis")
    svc_b = per(bare, "postgres") + per(bare, "redis")
    rig.rows += [
        Row(
            f"Worker CPU per task, prefork c=2 (ingest worker's flags), probe steps=1 (ms), n={n}",
            f"{per(proto, 'worker'):.2f}",
            f"bare no-op {per(bare, 'worker'):.2f}",
            f"{proto['worker'] / bare['worker']:.1f}x",
        ),
        Row(
            "  PostgreSQL + Redis CPU per task while the worker drains (ms)",
            f"{per(proto, 'postgres'):.2f} + {per(proto, 'redis'):.2f}",
            f"{per(bare, 'postgres'):.2f} + {per(bare, 'redis'):.2f}",
            f"{svc_p / svc_b:.1f}x" if svc_b > 0.001 else "",
        ),
        Row(
            "  Redis commands / PostgreSQL connections opened, per task",
            f"{proto['redis_cmds'] / n:.1f} / {proto['pg_conns'] / n:.3f}",
            f"{bare['redis_cmds'] / n:.1f} / {bare['pg_conns'] / n:.3f}",
            "",
        ),
        Row(
            "  Worker drain rate (tasks/s)",
            f"{n / proto['wall']:,.0f}",
            f"bare no-op {n / bare['wall']:,.0f}",
            f"{(n / proto['wall']) / (n / bare['wall']):.2f}",
        ),
    ]
