"""The hop tables: the first token's way through the path, the worker's time before the LLM request by what
it did, and the single round trips; and the traces they are read from."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bench.chat.phases import Phase
from bench.chat.streams import Stream
from bench.common import pct

# The first token's way, hop by hop: (label, from, to). ``c.`` the client, ``a.`` the API, ``w.`` the worker.
HOPS: list[tuple[str, str, str]] = [
    ("POST sent → route body runs (HTTP, uvicorn, key check, threadpool)", "c.sent", "a.route"),
    ("the job's payload (`ask`, before its statement)", "a.route", "a.submit"),
    ("session check, user message, job row: one statement and its durable commit", "a.submit", "a.send"),
    (
        "the send (`queued` event and message, one pipeline) → the worker's consumer has the message",
        "a.send",
        "w.received",
    ),
    ("consumer → a pool thread starts the task", "w.received", "w.prerun"),
    ("claim the job row", "w.prerun", "w.claim_end"),
    ("`running` event, watcher, the question's context (one SELECT), progress", "w.claim_end", "w.retrieve_start"),
    ("retrieve (query embedding + hybrid search)", "w.retrieve_start", "w.retrieve_end"),
    ("`retrieve` done progress, prompt, `generate` progress", "w.retrieve_end", "w.acquire_start"),
    ("LLM limiter turn (one Redis script)", "w.acquire_start", "w.acquire_end"),
    ("→ `_stream_once` starts", "w.acquire_end", "w.llm_request"),
    ("LLM: request → first chunk (the model's own TTFT is in here)", "w.llm_request", "w.first_chunk"),
    ("first chunk → first text handed to XADD", "w.first_chunk", "w.tok0_start"),
    ("XADD of the first token → the API's XREAD returns it", "w.tok0_start", "a.tok0"),
    ("API yields it → client has parsed it (SSE write, HTTP)", "a.tok0", "c.tok0"),
    # asides: inside a hop, or off the first token's way
    ("  (within retrieve) query embedding", "w.embed_start", "w.embed_end"),
    ("  (aside) the send returns (the consumer may have the message first)", "a.send", "a.sent"),
    ("  (aside) route's tail after the send", "a.sent", "a.submitted"),
    ("  (aside) POST sent → 202 received", "c.sent", "c.accepted"),
    ("  (aside) POST sent → SSE route reading the stream", "c.sent", "a.follow"),
    ("  (aside) worker's XADD call returns (XREAD readers may wake first)", "w.tok0_start", "w.tok0_end"),
]


@dataclass
class Traces:
    """Stamps from the traced API and worker, by job id (empty with ``--plain``)."""

    api: dict[str, dict[str, Any]] = field(default_factory=dict)
    worker: dict[str, dict[str, Any]] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # the jobs' results (usage)

    def stamps(self, stream: Stream) -> dict[str, float]:
        """Every stamp of one path stream, on one clock, named as in ``HOPS``."""
        out: dict[str, float] = {"c.sent": stream.sent}
        if stream.accepted is not None:
            out["c.accepted"] = stream.accepted
        if stream.tokens:
            out["c.tok0"] = stream.tokens[0]
        api = self.api.get(stream.job_id or "", {})
        out |= {f"a.{k}": float(v) for k, v in api.items() if isinstance(v, (int, float))}
        if api.get("tokens"):
            out["a.tok0"] = api["tokens"][0]
        worker = self.worker.get(stream.job_id or "", {})
        out |= {f"w.{k}": float(v) for k, v in worker.items() if isinstance(v, (int, float))}
        if worker.get("tokens"):
            out["w.tok0_start"], out["w.tok0_end"] = worker["tokens"][0]
        return out

    def relay(self, stream: Stream) -> list[tuple[float, float, float]] | None:
        """Per token after the first: (worker XADDs → API's XREAD has it, API → client, the worker's XADD call),
        seconds; None when the three sides did not count the same tokens."""
        worker = self.worker.get(stream.job_id or "", {}).get("tokens") or []
        api = self.api.get(stream.job_id or "", {}).get("tokens") or []
        if not worker or not (len(worker) == len(api) == len(stream.tokens)):
            return None
        return [(a - w0, c - a, w1 - w0) for (w0, w1), a, c in list(zip(worker, api, stream.tokens, strict=True))[1:]]


def ms(values: Iterable[float | None]) -> list[float]:
    return [1000 * v for v in values if v is not None]


def span(stamps: dict[str, float], start: str, end: str) -> float | None:
    return stamps[end] - stamps[start] if start in stamps and end in stamps else None


def hop_table(traces: Traces, phase: Phase) -> list[str]:
    """The first token's way through the path, hop by hop (empty without traces)."""
    stamps = [traces.stamps(s) for s in phase.of("path")]
    if not any("w.prerun" in st for st in stamps):
        return []
    lines = [
        f"Where the first token's time goes, {phase.name} (path, n={len(stamps)}; ms; rows in order, the "
        "means add up to the mean time to first token; `c.` client, `a.` API, `w.` worker):",
        "",
        "| hop | from → to | p50 | mean | p99 |",
        "| --- | --- | --- | --- | --- |",
    ]
    total = 0.0
    for label, start, end in HOPS:
        values = ms(span(st, start, end) for st in stamps)
        if not values:
            continue
        mean = statistics.fmean(values)
        if not label.startswith("  "):
            total += mean
        lines.append(
            f"| {label} | `{start}` → `{end}` | {pct(values, 0.5):.2f} | {mean:.2f} | {pct(values, 0.99):.2f} |"
        )
    ttft = ms(s.ttft for s in phase.of("path"))
    lines.append(
        f"| sum of the hops' means / mean time to first token | | | {total:.2f} / {statistics.fmean(ttft):.2f} | |"
    )
    return [*lines, ""]


def worker_time_table(traces: Traces, phase: Phase) -> list[str]:
    """The worker's time from the task's start to the LLM request, by what it was doing."""
    traced = [t for s in phase.of("path") if (t := traces.worker.get(s.job_id or "")) and "llm_request" in t]
    if not traced:
        return []
    calls: dict[str, list[float]] = {}
    per_job: dict[str, list[float]] = {}
    for t in traced:
        spent: dict[str, float] = {}
        for kind, start, end in t["spans"]:
            if end <= t["llm_request"]:
                calls.setdefault(kind, []).append(1000 * (end - start))
                spent[kind] = spent.get(kind, 0.0) + 1000 * (end - start)
        spent["  of which query embedding"] = spent.get("query embedding", 0.0)
        spent.pop("query embedding", None)
        total = 1000 * (t["llm_request"] - t["prerun"])
        counted = sum(v for k, v in spent.items() if not k.startswith("  "))
        spent["rest: Python between calls, thread hand-offs, GIL waits"] = total - counted
        spent["total: task start → LLM request sent"] = total
        if "cpu_llm_request" in t:
            spent["  the task thread's own CPU time in that total"] = 1000 * (t["cpu_llm_request"] - t["cpu_prerun"])
        for kind, value in spent.items():
            per_job.setdefault(kind, []).append(value)
    calls["  of which query embedding"] = calls.pop("query embedding", [])
    lines = [
        f"The worker's time before the LLM request, {phase.name} (path, n={len(traced)}; ms):",
        "",
        "| what | calls per job | per job, mean | per job, p99 | one call, p50 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind, values in per_job.items():
        count = len(calls.get(kind, [])) / len(traced)
        one = f"{pct(calls[kind], 0.5):.2f}" if calls.get(kind) else ""
        lines.append(
            f"| {kind} | {count:.0f} | {statistics.fmean(values):.2f} | {pct(values, 0.99):.2f} | {one} |"
            if count
            else f"| {kind} | | {statistics.fmean(values):.2f} | {pct(values, 0.99):.2f} | |"
        )
    return [*lines, ""]


def probe_table(rows: list[tuple[str, float, float]]) -> list[str]:
    return [
        "Round trips the path makes before the first token, timed one at a time from the bench process "
        "after the phases (ms):",
        "",
        "| round trip | p50 | p99 |",
        "| --- | --- | --- |",
        *[f"| {name} | {p50:.2f} | {p99:.2f} |" for name, p50, p99 in rows],
        "",
    ]
