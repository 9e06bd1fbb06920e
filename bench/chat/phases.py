"""The measured phases: one stream at a time (path and direct alternating), then bursts of N concurrent
streams (a path round, then a direct round, alternating which goes first). CPU of every process is read
between samples and rounds, never inside the measured window, and credited to the kind that ran.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx

from bench.chat import streams
from bench.chat.streams import Stream, Target
from bench.common import cpu_of

if TYPE_CHECKING:
    from protostar.llm.stream import ChatLLM

PROCESSES = ("api", "worker", "redis", "postgres", "llm", "client")


@dataclass
class Cpu:
    """CPU seconds per process, summed over what one kind of stream ran."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PROCESSES, 0.0))

    def add(self, before: dict[str, float], after: dict[str, float]) -> None:
        for name in PROCESSES:
            self.seconds[name] += after[name] - before[name]


@dataclass
class Phase:
    """The streams of one phase and the CPU each kind cost, plus (bursts) each round's wall time."""

    name: str
    concurrency: int
    runs: list[Stream] = field(default_factory=list)
    cpu: dict[str, Cpu] = field(default_factory=lambda: {"path": Cpu(), "direct": Cpu(), "chatllm": Cpu()})
    rounds: list[tuple[str, float, float]] = field(default_factory=list)  # (kind, first sent, last token)

    def of(self, kind: str) -> list[Stream]:
        return [s for s in self.runs if s.kind == kind]

    def tokens(self, kind: str) -> int:
        return sum(len(s.tokens) for s in self.of(kind))


class Meter:
    """Reads the CPU times of the run's processes (by pid, looked up once)."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids

    def read(self) -> dict[str, float]:
        seconds = {name: cpu_of(self.pids.get(name)) for name in PROCESSES if name != "client"}
        seconds["client"] = time.process_time()
        return seconds


def single(target: Target, meter: Meter, samples: int, llm: ChatLLM | None, *, pause: float = 0.05) -> Phase:
    """``samples`` rounds, one stream at a time: a path stream, a direct one and (with ``llm``) one through
    ``ChatLLM``, their order rotated every round so that none always follows the same other."""
    phase = Phase("1 stream", 1)
    kinds = ["path", "direct"] + (["chatllm"] if llm is not None else [])

    async def one(http: httpx.AsyncClient, kind: str, session: str) -> Stream:
        if kind == "path":
            return await streams.path(http, target, session, streams.question())
        if kind == "direct":
            return await streams.direct(http, target, streams.question())
        assert llm is not None
        return await asyncio.to_thread(streams.product_client, llm, target, streams.question())

    async def run() -> None:
        async with streams.client() as http:
            for i in range(samples):
                order = kinds[i % len(kinds) :] + kinds[: i % len(kinds)]
                if (i // len(kinds)) % 2:
                    order.reverse()
                for kind in order:
                    session = (await streams.sessions(http, target, 1))[0] if kind == "path" else ""
                    await asyncio.sleep(pause)  # let the previous job's tail (answer row, ack, trace) settle
                    before = meter.read()
                    phase.runs.append(await one(http, kind, session))
                    phase.cpu[kind].add(before, meter.read())

    asyncio.run(run())
    return phase


def bursts(
    target: Target, meter: Meter, concurrency: int, rounds: int, *, name: str, between: Callable[[], None]
) -> Phase:
    """``rounds`` x (``concurrency`` path streams at once, then as many direct ones), alternating which first;
    ``between`` runs after each round (e.g. wait until the worker is idle again)."""
    phase = Phase(name, concurrency)

    async def run() -> None:
        async with streams.client() as http:
            for r in range(rounds):
                for kind in ("path", "direct") if r % 2 == 0 else ("direct", "path"):
                    ids = await streams.sessions(http, target, concurrency) if kind == "path" else [""] * concurrency
                    before = meter.read()
                    runs = await streams.burst(http, target, kind, ids)
                    phase.cpu[kind].add(before, meter.read())
                    phase.runs += runs
                    last = max((s.tokens[-1] for s in runs if s.tokens), default=float("nan"))
                    phase.rounds.append((kind, min(s.sent for s in runs), last))
                    await asyncio.to_thread(between)

    asyncio.run(run())
    return phase
