"""Streams benchmark: Server-Sent Events followers one API process holds, and the relay's lag, next to Redis.

    .venv/bin/python -m bench.streams [--sizes 100,1000] [--rounds 10]

Starts its own embedded Redis/PostgreSQL/S3 and ONE API process (``commands.api``, as ``protostar up`` runs
it; no workers, no LLM) in a temp dir on free ports, with ``PROTOSTAR_TENANT_MAX_STREAMS`` above the largest
size (every stream is the admin tenant's). For each size N:

1. **Protostar**: N probe jobs are sent (``POST /v1/probes``; no worker consumes them, they stay ``queued``),
   and N followers ``GET /v1/jobs/{id}/events`` at once, one job each, from raw asyncio sockets in this
   process (``bench.streams.sse``). Once every follower has its ``200``, ``--rounds`` rounds: the benchmark
   appends one event to every job's stream (one pipeline, as a worker's ``EventLog`` writes them, its data
   stamped with ``time.time()``) and waits until every follower has it; then ``done``. Lag is stamp → the
   event's bytes read by the follower. Held: followers that got every event and ``done`` without breaking.
2. **Baseline, lag**: N bare readers in this process, each a blocking ``XREAD`` loop on its own connection
   (redis-py asyncio, a pool of N), on N other stream keys, with the same rounds: Redis's own relay lag.
3. **Baseline, held**: the relay before (one blocking ``XREAD`` per follower on a redis-py asyncio client with
   its default pool, 100 connections): readers still reading after a round, of N.

Results: a markdown table on stdout and in ``bench/results/streams.md``; process output in
``bench/results/streams.log``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.common import RESULTS, MachineShare, Row, arguments, markdown, pct, publish, wait_idle
from bench.harness import System, bench_env, launched
from bench.streams.sse import Follower, follow

LOG = RESULTS / "streams.log"
ROUND_TIMEOUT = 60.0  # seconds a round may take before the missing followers are counted as broken


def streams_env(data_dir: Path, args: argparse.Namespace) -> dict[str, str]:
    sizes = [int(s) for s in args.sizes.split(",")]
    return bench_env(data_dir, args.log_level) | {"PROTOSTAR_TENANT_MAX_STREAMS": str(max(sizes) * 2)}


async def submit_jobs(system: System, count: int) -> list[str]:
    headers = {"Authorization": f"Bearer {system.admin_key}"}
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(base_url=system.settings.public_api_url, headers=headers, limits=limits) as http:
        gate = asyncio.Semaphore(16)

        async def one() -> str:
            async with gate:
                answer = await http.post("/v1/probes", json={"queue": "chat", "steps": 1}, timeout=60)
                answer.raise_for_status()
                return str(answer.json()["job_id"])

        return list(await asyncio.gather(*(one() for _ in range(count))))


def publish_round(system: System, keys: list[str], kind: str, *, stamp: bool) -> None:
    pipe = system.redis.pipeline(transaction=False)
    data = json.dumps({"t": time.time()} if stamp else {})
    for key in keys:
        pipe.xadd(key, {"type": kind, "data": data}, maxlen=1000, approximate=True)
    pipe.execute()


async def wait_until(check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def protostar_phase(system: System, jobs: list[str], rounds: int) -> list[Follower]:
    from protostar.jobs.events import stream_key

    followers = [Follower(job) for job in jobs]
    tasks = [asyncio.create_task(follow(system.settings.public_api_url, system.admin_key, f)) for f in followers]
    began = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(f.opened.wait() for f in followers)), 180)
    print(f"  {len(followers)} followers open in {time.monotonic() - began:.1f} s", flush=True)
    await asyncio.sleep(1.0)  # every follower past its replay and in the hub
    keys = [stream_key(j) for j in jobs]
    for r in range(rounds):
        await asyncio.to_thread(publish_round, system, keys, "progress", stamp=True)
        await wait_until(lambda r=r: all(f.received > r or f.error for f in followers), ROUND_TIMEOUT)
        await asyncio.sleep(0.05)
    await asyncio.to_thread(publish_round, system, keys, "done", stamp=False)
    await asyncio.wait(tasks, timeout=ROUND_TIMEOUT)
    for task in tasks:
        task.cancel()
    return followers


async def baseline_lag(system: System, count: int, rounds: int) -> list[list[float]]:
    """N bare blocking XREAD readers, each on its own connection: lags per reader."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(system.settings.redis_url or "", max_connections=count + 10)
    keys = [f"bench:streams:{time.time_ns()}:{i}" for i in range(count)]
    lags: list[list[float]] = [[] for _ in keys]
    ready = [asyncio.Event() for _ in keys]

    async def reader(i: int) -> None:
        last = "0-0"
        ready[i].set()
        while True:
            reply: Any = await client.xread({keys[i]: last}, block=30_000)
            at = time.time()
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id
                    if fields[b"type"] == b"done":
                        return
                    lags[i].append(at - float(json.loads(fields[b"data"])["t"]))

    tasks = [asyncio.create_task(reader(i)) for i in range(count)]
    await asyncio.gather(*(e.wait() for e in ready))
    await asyncio.sleep(1.0)  # every reader in its blocking read
    for r in range(rounds):
        await asyncio.to_thread(publish_round, system, keys, "progress", stamp=True)
        await wait_until(lambda r=r: all(len(x) > r for x in lags), ROUND_TIMEOUT)
        await asyncio.sleep(0.05)
    await asyncio.to_thread(publish_round, system, keys, "done", stamp=False)
    await asyncio.wait(tasks, timeout=ROUND_TIMEOUT)
    await client.aclose()
    system.redis.delete(*keys)
    return lags


async def baseline_held(system: System, count: int) -> int:
    """The relay before: one blocking XREAD per follower on one client's default pool (100 connections)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(system.settings.redis_url or "")
    keys = [f"bench:held:{time.time_ns()}:{i}" for i in range(count)]
    got = [False] * count

    async def reader(i: int) -> None:
        reply: Any = await client.xread({keys[i]: "0-0"}, block=10_000)
        got[i] = bool(reply)

    tasks = [asyncio.create_task(reader(i)) for i in range(count)]
    await asyncio.sleep(1.0)
    await asyncio.to_thread(publish_round, system, keys, "progress", stamp=True)
    await asyncio.gather(*tasks, return_exceptions=True)
    await client.aclose()
    system.redis.delete(*keys)
    return sum(got)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main() -> None:
    parser = arguments("streams", __doc__)
    parser.add_argument("--sizes", default="100,1000", help="numbers of concurrent streams, comma-separated")
    parser.add_argument("--rounds", type=int, default=10, help="events sent to every stream per size")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    started = time.monotonic()
    rows: list[Row] = []
    extra: list[str] = []
    with launched(lambda d: streams_env(d, args), LOG) as system:
        api = psutil.Process(system.pid("api"))
        wait_idle(system.pid("api"), "the API")
        share = MachineShare()
        for n in sizes:
            print(f"{n} streams: sending {n} probe jobs", flush=True)
            jobs = asyncio.run(submit_jobs(system, n))
            rss_before = api.memory_info().rss
            print(f"{n} streams: baseline readers", flush=True)
            base = asyncio.run(baseline_lag(system, n, args.rounds))
            print(f"{n} streams: Protostar followers", flush=True)
            cpu_before = sum(api.cpu_times()[:2])
            followers = asyncio.run(protostar_phase(system, jobs, args.rounds))
            cpu = sum(api.cpu_times()[:2]) - cpu_before
            rss_peak = api.memory_info().rss
            print(f"{n} streams: the relay before", flush=True)
            before = asyncio.run(baseline_held(system, n))
            held = sum(1 for f in followers if f.done and f.received == args.rounds and not f.error)
            ours = [x for f in followers for x in f.lags]
            theirs = [x for r in base for x in r]
            errors = sorted({f.error for f in followers if f.error})
            rows += [
                Row(
                    f"followers held, of {n}",
                    f"{held}",
                    f"{before} (the relay before)",
                    f"{held / max(before, 1):.1f}x",
                ),
                Row(
                    f"relay lag p50, {n} streams",
                    ms(pct(ours, 0.5)),
                    ms(pct(theirs, 0.5)),
                    f"+{ms(pct(ours, 0.5) - pct(theirs, 0.5))}",
                ),
                Row(
                    f"relay lag p99, {n} streams",
                    ms(pct(ours, 0.99)),
                    ms(pct(theirs, 0.99)),
                    f"+{ms(pct(ours, 0.99) - pct(theirs, 0.99))}",
                ),
            ]
            extra.append(
                f"- {n} streams: {len(ours)} lag samples (bare XREAD: {len(theirs)}); API RSS "
                f"{rss_before / 2**20:.0f} → {rss_peak / 2**20:.0f} MiB with the streams open; API CPU "
                f"{cpu:.2f} s for {n * (args.rounds + 1)} events relayed"
                + (f"; follower errors: {', '.join(str(e) for e in errors)}" if errors else "")
            )
        extra.append("")
        extra.append(share.describe())
    text = markdown(
        "streams",
        f"sizes {args.sizes}, {args.rounds} rounds, one API process, followers on raw asyncio sockets",
        time.monotonic() - started,
        rows,
        ratio="ratio / difference",
        extra=extra,
        notes=[
            "lag: time.time() stamped before the round's pipeline of XADDs → the event read by the follower "
            "(same machine clock); a round's events all leave in one pipeline, so a round is a burst of N events",
            "baseline lag: bare redis-py asyncio blocking XREAD readers, one connection each (no HTTP, no fan-out)",
            "baseline held: one blocking XREAD per follower on redis-py's default asyncio pool (100 connections), "
            "the relay before the hub; the others fail with 'Too many connections'",
        ],
    )
    publish("streams", text)


if __name__ == "__main__":
    main()
