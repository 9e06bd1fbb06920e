"""Chat benchmark: what Protostar's chat path adds to an LLM's stream, next to the same LLM called directly.

    .venv/bin/python -m bench.chat [--samples 40] [--streams 50] [--rounds 2] [--max-tokens 32]
                                   [--parallel 4] [--high-parallel 50] [--cancels 5] [--plain]

Starts its own embedded Redis/PostgreSQL/S3 AND the embedded LLM (llama-server with SmolLM2-135M-Instruct,
``--parallel 4`` as by default) in a temp dir on free ports, applies migrations, runs the API
(``commands.api``) and ONE chat worker (``commands.worker(settings, "chat")``: threads pool, concurrency 50).
For the run, ``PROTOSTAR_LLM_CONCURRENCY``, ``_TENANT_CONCURRENCY`` and ``PROTOSTAR_TENANT_INFLIGHT_CHAT`` (the
tenant's fair-turn cap) are 50 and both RPM limits 100,000, so neither the LLM limiter nor the turns make a
stream wait; answers are capped at ``--max-tokens`` (``PROTOSTAR_LLM_MAX_TOKENS``).

Every question goes to a tenant without documents, in a fresh session, so the worker's prompt is exactly
``protostar.chat.prompt.build(question, no hits, no history)``: the direct baseline sends those messages with
the same ``max_tokens`` to the same llama-server (prompt tokens are compared in the notes). Each question ends
in a unique six-digit ticket number, so every request finds the same cached prefix in llama-server (every slot
is warmed first) and evaluates the same few new tokens. Path and direct streams come from one asyncio httpx
client in this process and are parsed alike (``bench.chat.streams``).

1. Time to first token: ``POST /v1/sessions/{id}/messages`` → the first ``token`` event read from
   ``GET /v1/jobs/{id}/events`` (a real SSE client over HTTP; a broken response is resumed with
   ``Last-Event-ID``) vs request → first content chunk of a direct streaming ``/v1/chat/completions`` call.
   One stream at a time (``--samples`` rounds of path, direct and the worker's own ``ChatLLM`` client called
   from a thread here, order rotating), then ``--streams`` at once (``--rounds`` path bursts and as many direct
   bursts, alternating which goes first). p50/p99 and the difference (goal: ≤ +10 ms p50, ≤ +25 ms p99).
   Retrieval (query embedding + search) is reported apart.
2. Relay cost per token: lag from the worker reading an LLM chunk to the client having the SSE event, gaps
   between tokens at the client, tokens/s per stream and delivered to all clients vs direct, and CPU per
   token of the worker (task thread, after the first token), API, Redis, PostgreSQL, llama-server, client.
3. The pool: how many streams the one worker had in flight at once, limiter waits, task start delays.
4. ``--high-parallel N`` (default 50, 0 skips): llama-server restarted with ``--parallel N`` and the bursts
   repeated, so all 50 streams decode at once; with ``--parallel 4`` they queue inside llama-server (both
   kinds alike) and only 4 token streams flow through the relay at a time.
5. Cancel latency by stage (``--cancels`` per stage, default 5, 0 skips; ``bench.chat.cancels``): from
   ``POST /v1/jobs/{id}/cancel`` to the ``cancelled`` status event at the client, the cancel sent while the job
   is queued, retrieving, waiting for the LLM's first token (queued in llama-server and reading a long prompt),
   or generating (goal: ≤ 500 ms at every stage).

Where the time goes: unless ``--plain``, the API and worker run as ``bench.chat.trace_api`` and
``bench.chat.trace_worker`` (Protostar's own app and worker app, with ``time.time()`` noted at each hop: a few
microseconds each); the hop tables follow the first token from the POST to the client, and
``bench.chat.probes`` then times single round trips (row write + commit variants, XADD) to price the fixes.

Results: a markdown table on stdout and in ``bench/results/chat.md``; process output (and llama-server's
log) in ``bench/results/chat.log``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import httpx

from bench.chat import TRACE_PREFIX, cancels, phases, probes, streams
from bench.chat.hops import Traces
from bench.chat.phases import Meter, Phase
from bench.chat.report import Report
from bench.chat.streams import Target
from bench.common import RESULTS, ROOT, MachineShare, arguments, markdown, publish, wait_idle
from bench.harness import System, bench_env, launched

LOG = RESULTS / "chat.log"
WORKER = "chat"
CHAT_CONCURRENCY = 50  # the chat worker's threads, as the brief and the default settings have it


def chat_env(data_dir: Path, args: argparse.Namespace) -> dict[str, str]:
    """``bench.ingest``'s environment (own data dir, free ports), but with the embedded LLM and the chat knobs."""
    from protostar.runtime.process import free_port

    env = bench_env(data_dir, args.log_level)
    del env["PROTOSTAR_LLM_BASE_URL"]  # empty: the stack starts its llama-server
    limit = str(max(CHAT_CONCURRENCY, args.streams))
    env |= {
        "PROTOSTAR_LLM_PORT": str(free_port()),
        "PROTOSTAR_LLM_PARALLEL": str(args.parallel),
        "PROTOSTAR_LLM_MAX_TOKENS": str(args.max_tokens),
        "PROTOSTAR_CHAT_CONCURRENCY": str(CHAT_CONCURRENCY),
        "PROTOSTAR_LLM_CONCURRENCY": limit,
        "PROTOSTAR_LLM_TENANT_CONCURRENCY": limit,
        # Every stream is the one bench tenant's: with its default fair-turn cap (10 chat jobs in flight) 40 of
        # the 50 would wait unsent for a turn, and "50 streams at once" would be 10 at a time.
        "PROTOSTAR_TENANT_INFLIGHT_CHAT": limit,
        "PROTOSTAR_LLM_RPM": "100000",
        "PROTOSTAR_LLM_TENANT_RPM": "100000",
        # 50 streams queue inside llama-server (4 decoded at once): the last waits many seconds for its turn.
        "PROTOSTAR_LLM_FIRST_TOKEN_TIMEOUT": "120",
    }
    return env


def warm_up(target: Target, system: System, parallel: int, *, timeout: float = 180) -> None:
    """Until a path stream gets tokens (the worker loads its embedding model first), then a few of each, then
    one direct request per llama-server slot."""

    async def run() -> None:
        async with streams.client() as http:
            deadline = time.monotonic() + timeout
            while True:
                session = (await streams.sessions(http, target, 1))[0]
                first = await streams.path(http, target, session, streams.question())
                if first.tokens:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no chat answer within {timeout} s: {first.error} (see {LOG})")
                await asyncio.sleep(1)
            for _ in range(3):
                session = (await streams.sessions(http, target, 1))[0]
                await streams.path(http, target, session, streams.question())
                await streams.direct(http, target, streams.question())
            await streams.burst(http, target, "path", await streams.sessions(http, target, 8))
            await streams.burst(http, target, "direct", [""] * 8)
            # Every llama-server slot gets the prompt's common prefix cached, so that the first burst of either
            # kind does not pay for cold slots that the other kind then finds warm.
            await streams.burst(http, dataclasses.replace(target, max_tokens=1), "direct", [""] * parallel)

    asyncio.run(run())
    wait_idle(system.pid(f"worker-{WORKER}"), "the chat worker")
    wait_idle(system.pid("api"), "the API")


def restart_llm(system: System, target: Target, parallel: int) -> None:
    """llama-server again, same port and key, decoding ``parallel`` sequences at once (context to match)."""
    llm = system.stack.llm
    llm.stop()
    llm.parallel = parallel
    llm.context_tokens = max(llm.context_tokens, 320 * parallel)
    llm.start()
    warm_up(target, system, parallel)


def collect(system: System, target: Target, runs: list[streams.Stream], plain: bool) -> Traces:
    job_ids = [s.job_id for s in runs if s.kind == "path" and s.job_id]
    traces = Traces()
    with httpx.Client(base_url=target.api_url, headers={"Authorization": f"Bearer {target.api_key}"}) as api:
        for job_id in job_ids:
            job = api.get(f"/v1/jobs/{job_id}").json()
            traces.results[job_id] = job.get("result") or {}
        if not plain:
            traces.api = api.get("/bench/trace").json()
    if not plain:
        stored = system.redis.mget([TRACE_PREFIX + j for j in job_ids]) if job_ids else []
        traces.worker = {j: json.loads(raw) for j, raw in zip(job_ids, stored, strict=True) if raw}
    return traces


def measure_cancels(args: argparse.Namespace, system: System, target: Target) -> list[cancels.CancelRun]:
    if not args.cancels:
        return []
    print(f"    cancels: {args.cancels} x {len(cancels.STAGES)} stages...", flush=True)
    runs = cancels.measure(target, args.cancels)
    wait_idle(system.pid(f"worker-{WORKER}"), "the chat worker")
    return runs


def measure(
    args: argparse.Namespace, system: System, target: Target
) -> tuple[list[Phase], list[Phase], list[cancels.CancelRun]]:
    """Phases 1-3 at ``--parallel``, the cancels (at ``--parallel``: each slot's context holds the long question),
    then the bursts again at ``--high-parallel``; (all phases, burst phases, cancels)."""
    stack = system.stack

    def meter() -> Meter:
        pids = {"api": system.pid("api"), "worker": system.pid(f"worker-{WORKER}")}
        return Meter(pids | {"redis": stack.redis.pid, "postgres": stack.postgres.pid, "llm": stack.llm.pid})

    def settle() -> None:
        time.sleep(1.0)  # the round's last jobs end (answer saved, job row, ack) before the next round

    clock = time.perf_counter()

    def took() -> None:
        nonlocal clock
        print(f"    {time.perf_counter() - clock:.0f} s", flush=True)
        clock = time.perf_counter()

    def bursts_at(parallel: int) -> Phase:
        name = f"{args.streams} streams, --parallel {parallel}"
        phase = phases.bursts(target, meter(), args.streams, args.rounds, name=name, between=settle)
        took()
        return phase

    print(f"1/3 one stream at a time: {args.samples} x (path, direct, ChatLLM), rotating...", flush=True)
    from protostar.llm.stream import ChatLLM

    single = phases.single(target, meter(), args.samples, ChatLLM.from_settings(system.settings))
    took()
    print(f"2/3 {args.streams} streams at once, {args.rounds} rounds each (--parallel {args.parallel})...", flush=True)
    burst = bursts_at(args.parallel)
    done, bursts = [single, burst], [burst]
    cancel_runs = measure_cancels(args, system, target)
    if cancel_runs:
        took()
    if args.high_parallel:
        print(f"3/3 llama-server restarted with --parallel {args.high_parallel}; the bursts again...", flush=True)
        restart_llm(system, target, args.high_parallel)
        high = bursts_at(args.high_parallel)
        done.append(high)
        bursts.append(high)
    return done, bursts, cancel_runs


def build_report(args: argparse.Namespace, done: list[Phase], bursts: list[Phase], traces: Traces) -> Report:
    report = Report(traces, llm_parallel=args.parallel)
    parallel = {id(p): args.parallel for p in done}
    if args.high_parallel:
        parallel[id(done[-1])] = args.high_parallel
    for phase in done:
        report.ttft(phase, parallel=parallel[id(phase)])
    for phase in done:
        report.relay(phase)
    for phase in done:
        report.cpu(phase)
    for phase in bursts:
        report.llm_parallel = parallel[id(phase)]
        report.pool(phase)
    for phase in done:
        report.hops(phase)
    report.checks(done)
    return report


def render(args: argparse.Namespace, report: Report, elapsed: float) -> str:
    run = (
        f"{args.samples} single rounds (path, direct, ChatLLM) · {args.streams} streams x {args.rounds} rounds · "
        f"max_tokens {args.max_tokens} · llama-server --parallel {args.parallel}"
        + (f" then {args.high_parallel}" if args.high_parallel else "")
        + (" · plain processes (no hop stamps)" if args.plain else " · traced API and worker")
    )
    return markdown(
        "chat", run, elapsed, report.rows, ratio="difference / ratio", extra=report.extra, notes=report.notes
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = arguments("chat", __doc__)
    p.add_argument("--samples", type=int, default=40, help="one-at-a-time rounds (path, direct, ChatLLM)")
    p.add_argument("--streams", type=int, default=50, help="concurrent streams in the burst phases")
    p.add_argument("--rounds", type=int, default=2, help="burst rounds per kind (path, direct alternating)")
    p.add_argument("--max-tokens", type=int, default=32, help="PROTOSTAR_LLM_MAX_TOKENS, and the direct calls'")
    p.add_argument("--parallel", type=int, default=4, help="PROTOSTAR_LLM_PARALLEL: llama-server's --parallel")
    p.add_argument("--high-parallel", type=int, default=50, help="the bursts again at this --parallel (0: skip)")
    p.add_argument("--cancels", type=int, default=5, help="cancels per stage (bench.chat.cancels; 0: skip)")
    p.add_argument("--plain", action="store_true", help="run Protostar's API and worker without the hop stamps")
    p.add_argument("--log-level", default="WARNING", help="PROTOSTAR_LOG_LEVEL of the API and worker")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    os.chdir(ROOT)
    from protostar import commands

    api_factory = None if args.plain else "bench.chat.trace_api:create_app"
    print("starting embedded services (with llama-server), the API and one chat worker...", flush=True)
    with launched(lambda data_dir: chat_env(data_dir, args), LOG, api_factory=api_factory) as system:
        settings, stack = system.settings, system.stack
        worker = commands.worker(settings, WORKER)
        if not args.plain:
            worker[worker.index(commands.CELERY_APP)] = "bench.chat.trace_worker"
        system.supervisor.start(f"worker-{WORKER}", worker)
        key, _ = system.tenant_key("bench-chat")
        llm = stack.llm
        assert llm is not None  # chat_env leaves PROTOSTAR_LLM_BASE_URL empty
        target = Target(
            api_url=settings.public_api_url,
            api_key=key,
            llm_url=llm.base_url,
            llm_key=llm.api_key,
            model=settings.llm_model,
            max_tokens=settings.llm_max_tokens,
            budget=settings.chat_prompt_tokens,
        )
        print("warming up (the worker loads its embedding model on the first question)...", flush=True)
        warm_up(target, system, args.parallel)

        machine = MachineShare()
        done, bursts, cancel_runs = measure(args, system, target)
        note = machine.describe()
        traces = collect(system, target, [s for p in done for s in p.runs], args.plain)
        report = build_report(args, done, bursts, traces)
        report.cancels(cancel_runs)
        job_id = next((s.job_id for s in done[0].of("path") if s.job_id), None)
        if job_id is not None:
            print("    round trips, one at a time...", flush=True)
            report.probes(probes.measure(settings, system.redis, job_id))
        report.notes.append(note)

        text = render(args, report, time.perf_counter() - started)
        publish("chat", text)
        return 0


if __name__ == "__main__":
    sys.exit(main())
