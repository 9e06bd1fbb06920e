"""Fairness benchmark: how long tenant B's one job waits to start while tenant A has a backlog, next to the same
job with no backlog, in one run.

    .venv/bin/python -m bench.fairness [--backlog 500] [--samples 30] [--run-time 1.0]

Starts its own embedded Redis/PostgreSQL/S3 in a temp dir on free ports, the API and one ingest worker as
``protostar up`` runs them (prefork, ``PROTOSTAR_INGEST_CONCURRENCY`` 2, the default, and the default per-tenant
caps). Tenants A and B each have an admin key (probes need one).

1. Baseline: B submits a probe on the ingest queue (``steps 1, sleep 0``) and waits for it to end, ``--samples``
   times, with nothing else queued. Its start delay is the job's ``started_at - created_at`` (both from
   PostgreSQL's clock).
2. Backlog: A submits ``--backlog`` probes on the ingest queue, each running ``--run-time`` seconds (one
   sleep), from 8 threads; then B submits the same probe as in 1, one at a time, ``--samples`` times, while A's
   backlog is still there (the report says how much of it was left when the last sample ended).

Without turns, B's job would wait behind the whole backlog (``backlog x run time / 2`` children, 250 s with
the defaults). With them, about one A job's run time: the figure to compare is B's p99 against ``--run-time``.

Results: a markdown table on stdout and in ``bench/results/fairness.md``; process output in
``bench/results/fairness.log``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.common import RESULTS, ROOT, MachineShare, Row, arguments, markdown, pct, publish, wait_idle
from bench.harness import System, bench_env, launched

LOG = RESULTS / "fairness.log"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = arguments("fairness", __doc__)
    p.add_argument("--backlog", type=int, default=500, help="tenant A's probes queued at once")
    p.add_argument("--samples", type=int, default=30, help="tenant B's probes per phase, one at a time")
    p.add_argument("--run-time", type=float, default=1.0, help="seconds each of A's probes runs")
    p.add_argument("--log-level", default="INFO", help="PROTOSTAR_LOG_LEVEL of the API and workers")
    return p.parse_args(argv)


def admin_client(system: System, tenant: str) -> httpx.Client:
    from protostar.auth import create_key
    from protostar.db.engine import make_sessionmaker

    with make_sessionmaker(system.engine).begin() as session:
        key = create_key(session, tenant=f"{tenant}-{uuid.uuid4().hex[:6]}", admin=True)
    return system.client(key)


def probe(api: httpx.Client, **body: object) -> str:
    response = api.post("/v1/probes", json={"queue": "ingest", **body})
    if response.status_code != 202:
        raise RuntimeError(f"a probe answered {response.status_code}: {response.text}")
    return str(response.json()["job_id"])


def start_delay(system: System, api: httpx.Client) -> float:
    """Submit B's probe, wait for its end; seconds from its row's commit to its start (PostgreSQL's clock)."""
    job_id = probe(api, steps=1, sleep=0)
    run = system.wait(job_id, submitted=time.time(), api=api, timeout=900)
    if run.job["status"] != "succeeded":
        raise RuntimeError(f"B's probe ended {run.job['status']}: {run.job.get('error')}")
    return seconds_to_start(system, job_id)


def seconds_to_start(system: System, job_id: str) -> float:
    from sqlalchemy import text

    with system.engine.connect() as conn:
        value = conn.execute(
            text("SELECT extract(epoch FROM started_at - created_at) FROM jobs WHERE id = :id"), {"id": job_id}
        ).scalar_one()
    return float(value)


def not_started(system: System, job_ids: list[str]) -> int:
    from sqlalchemy import text

    with system.engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM jobs WHERE id = ANY(:ids) AND started_at IS NULL"), {"ids": job_ids}
            ).scalar_one()
        )


def ms(values: list[float], p: float) -> str:
    return f"{pct(values, p) * 1000:,.0f} ms"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    os.chdir(ROOT)

    def env(data_dir: Path) -> dict[str, str]:
        return bench_env(data_dir, args.log_level) | {"PROTOSTAR_INGEST_CONCURRENCY": "2"}

    print("starting embedded services...", flush=True)
    with launched(env, LOG) as system:
        system.start_ingest_worker()
        wait_idle(system.pid("api"), "the API")
        settings = system.settings
        machine = MachineShare()
        with admin_client(system, "fair-a") as a, admin_client(system, "fair-b") as b:
            print(f"1/2 baseline: {args.samples} probes of tenant B, nothing else queued...", flush=True)
            alone = [start_delay(system, b) for _ in range(args.samples)]
            print(f"2/2 tenant A queues {args.backlog} probes of {args.run_time} s, then B's probes...", flush=True)
            with ThreadPoolExecutor(8) as pool:
                backlog = list(pool.map(lambda _: probe(a, steps=1, sleep=args.run_time), range(args.backlog)))
            left_before = not_started(system, backlog)
            behind = [start_delay(system, b) for _ in range(args.samples)]
            left_after = not_started(system, backlog)
        drain = args.backlog * args.run_time / settings.ingest_concurrency
        rows = [
            Row(
                "B's start delay p50, A's backlog queued",
                ms(behind, 0.5),
                f"{ms(alone, 0.5)} (no backlog)",
                f"+{(pct(behind, 0.5) - pct(alone, 0.5)) * 1000:,.0f} ms",
                f"≤ one A job ({args.run_time:g} s) + a few s",
            ),
            Row(
                "B's start delay p99",
                ms(behind, 0.99),
                f"{ms(alone, 0.99)} (no backlog)",
                f"+{(pct(behind, 0.99) - pct(alone, 0.99)) * 1000:,.0f} ms",
                f"≤ one A job ({args.run_time:g} s) + a few s",
            ),
            Row("B's start delay max", ms(behind, 1.0), ms(alone, 1.0), "", ""),
        ]
        notes = [
            f"A's backlog: {args.backlog} probes of {args.run_time:g} s on the ingest queue "
            f"({settings.ingest_concurrency} prefork children; A's cap PROTOSTAR_TENANT_INFLIGHT_INGEST="
            f"{settings.tenant_inflight_ingest}); {left_before} of them not started when B's first sample was "
            f"submitted, {left_after} when its last ended. First in, first out, B's job would wait behind "
            f"the whole backlog: about {drain:,.0f} s.",
            f"{args.samples} samples per phase, one at a time; delay = started_at - created_at of B's job "
            "(PostgreSQL's clock: the commit of its row to its claim by a worker). p99 of so few samples is "
            "about the maximum.",
            machine.describe(),
        ]
        run = f"backlog {args.backlog} x {args.run_time:g} s · {args.samples} samples per phase"
        publish("fairness", markdown("fairness", run, time.perf_counter() - started, rows, notes=notes))
        return 0


if __name__ == "__main__":
    sys.exit(main())
