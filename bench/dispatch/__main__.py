"""Dispatch benchmark: what Protostar's submit path and job shell cost next to bare Celery, in one run.

    .venv/bin/python -m bench.dispatch [--duration 5] [--samples 200] [--tasks 2000] [--profile] [--turns]

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

The tenants' caps of jobs in flight are set above the load, so that every submit is sent at once and every
drained job is one the submit sent: the path a caller under its cap takes. The load's probes come from 64
tenants (``rig.LOAD_TENANTS``): each tenant's jobs in flight, which its submits and endings count, stay a few
dozen, as a cap allows in production, not the load's thousands. ``--turns`` keeps the default caps and one
tenant: then the submits past the cap are written and wait their turn, unsent, and in phase 3 each ending sends
the tenant's next job (``bench.fairness`` measures turns between tenants).

Results: a markdown table on stdout and in ``bench/results/dispatch.md``; process output in
``bench/results/dispatch.log``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bench.common import RESULTS, ROOT, MachineShare, arguments, markdown, publish, wait_idle
from bench.dispatch import latency, throughput, worker_cpu
from bench.dispatch.rig import Rig
from bench.harness import bench_env, launched

LOG = RESULTS / "dispatch.log"


def render(rig: Rig, elapsed: float) -> str:
    a, s = rig.args, rig.settings
    run = (
        f"duration {a.duration} s x {a.rounds} rounds, {a.conns} conns · {a.samples} latency samples · "
        f"{a.tasks} tasks · log level {s.log_level} · "
        + ("tenant caps kept (--turns)" if a.turns else "tenant caps above the load (every submit sent at once)")
        + (f" · API factory {a.api_factory} (EXP={os.environ.get('EXP', '')})" if a.api_factory else "")
    )
    breakdown = [
        "Submit path, sequential, no load (ms):",
        "",
        "| step | time | baseline | added |",
        "| --- | --- | --- | --- |",
        *[f"| {r.metric} | {r.value} | {r.baseline} | {r.ratio} |" for r in rig.breakdown],
    ]
    return markdown("dispatch", run, elapsed, rig.rows, ratio="ratio / added", extra=breakdown, notes=rig.notes)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = arguments("dispatch", __doc__)
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
    p.add_argument(
        "--turns",
        action="store_true",
        help="keep the tenant caps (a submit past it waits its turn, unsent; each ending sends the next): "
        "by default the caps are above the load, so every submit is sent at once",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    os.chdir(ROOT)

    def env(data_dir: Path) -> dict[str, str]:
        caps = {} if args.turns else {f"PROTOSTAR_TENANT_INFLIGHT_{q}": "1000000" for q in ("CHAT", "SUMMARY")}
        return bench_env(data_dir, args.log_level) | {"PROTOSTAR_INGEST_CONCURRENCY": "2"} | caps

    print("starting embedded services...", flush=True)
    with launched(env, LOG, api_factory=args.api_factory) as system:
        rig = Rig(args, system)
        wait_idle(rig.pid("api"), "the API")
        rig.log_pg_connections()

        machine = MachineShare()
        if "1" in args.phases:
            print("1/3 submit throughput (no worker consumes the submit queue)...", flush=True)
            throughput.run(rig)
        if "2" in args.phases or "3" in args.phases:
            rig.start_workers()
        if "2" in args.phases:
            print("2/3 enqueue-to-start latency...", flush=True)
            latency.run(rig)
        if "3" in args.phases:
            print("3/3 worker CPU per task...", flush=True)
            worker_cpu.run(rig)
        rig.notes.append(machine.describe())

        publish("dispatch", render(rig, time.perf_counter() - started))
        return 0


if __name__ == "__main__":
    sys.exit(main())
