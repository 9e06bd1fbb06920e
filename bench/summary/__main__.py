"""Summarization benchmark: what rolling summaries save in chat prompts, what a summary job costs next to the
same fold called directly, and how many summary jobs beat gets done per minute at 1,000 stale sessions.

    .venv/bin/python -m bench.summary [--turns 60] [--max-tokens 128] [--document PATH]
                                      [--stale 1000] [--beat-minutes 3] [--baseline-seconds 60] [--phases 123]

Starts its own embedded Redis/PostgreSQL/S3 and the embedded LLM (llama-server, SmolLM2-135M-Instruct) in a
temp dir on free ports, applies migrations, runs the API and the chat and summary workers as ``protostar up``
does, with the default settings except answers capped at ``--max-tokens``.

1. **Prompt tokens per turn**: a ``--turns`` conversation (``bench.summary.conversation``: a bakery owner asking
   for advice, telling ten facts along the way) held through ``POST /v1/sessions/{id}/messages``; the system
   queues a summary after every ``PROTOSTAR_SUMMARY_EVERY`` messages on its own, and each turn waits for it.
   Each answer's ``usage.prompt_tokens`` (llama-server's count of the prompt the worker sent) against the
   prompt the same question would have had with the whole history and no summary (the seed's baseline), and
   with only the latest ``PROTOSTAR_CHAT_HISTORY_MESSAGES`` messages and no summary (a window that forgets),
   both counted by the same llama-server (``/apply-template`` + ``/tokenize``: no context limit). The prompt
   the worker sent is rebuilt the same way from the database, as a check of the method. Also: the tokens the
   summary jobs spent, and how many of the ten facts the latest summary kept.
   **Session summary job duration**: each job's started -> finished, against the same fold (its previous
   summary and the messages it covers) with llama-server called directly, one at a time after the talk.
2. **Document summary** (``--document``, default the corpus's norwich-city.txt): uploaded, ingested, then
   ``POST /v1/documents/{id}/summarize`` (map, then reduce), against the same fold over its chunks called
   directly. Starts one ingest worker for the upload, stopped after.
3. **Beat at ``--stale`` stale sessions** (``bench.summary.beat``): summary jobs finished per minute over
   ``--beat-minutes`` from beat's first tick, against the same folds called directly from as many threads as
   the summary worker has, for ``--baseline-seconds``.

Results: a markdown table on stdout and in ``bench/results/summary.md``; process output (and llama-server's
log) in ``bench/results/summary.log``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT, MachineShare, Row, arguments, markdown, pct, publish, wait_idle
from bench.harness import INGEST_WORKER, System, bench_env, launched
from bench.llm import Direct
from bench.summary import beat, document, session

LOG = RESULTS / "summary.log"
# Longer than one call (1,669 tokens in 15 chunks): two map calls and a reduce. norwich-city.txt (14,545 tokens)
# takes 12-14 calls, about five minutes each way on 2 cores.
DOCUMENT = ROOT / "tests" / "corpus" / "layout-parser-paper-fast.pdf"


def summary_env(data_dir: Path, args: argparse.Namespace) -> dict[str, str]:
    """``bench.ingest``'s environment (own data dir, free ports), with the embedded LLM and capped answers."""
    from protostar.runtime.process import free_port

    env = bench_env(data_dir, args.log_level)
    del env["PROTOSTAR_LLM_BASE_URL"]  # empty: the stack starts its llama-server
    return env | {"PROTOSTAR_LLM_PORT": str(free_port()), "PROTOSTAR_LLM_MAX_TOKENS": str(args.max_tokens)}


class Report:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.extra: list[str] = []
        self.notes: list[str] = []

    def conversation(self, talk: session.Conversation, settings: Any) -> None:
        self.prompt_tokens(talk, settings)
        self.per_turn(talk)

    def prompt_tokens(self, talk: session.Conversation, settings: Any) -> None:
        """Prompt tokens per turn against the whole history and a window, the summary jobs' own counted."""
        turns = talk.turns
        later = turns[len(turns) // 2 :]

        def mean(values: list[int]) -> float:
            return statistics.fmean(values) if values else float("nan")

        def fewer(ours: float, base: float) -> str:
            return f"{(1 - ours / base) * 100:.0f} % fewer" if base else "—"

        with_all, full_all = mean([t.prompt_tokens for t in turns]), mean([t.full for t in turns])
        with_later, full_later = mean([t.prompt_tokens for t in later]), mean([t.full for t in later])
        window_later = mean([t.window for t in later])
        span = f"turns {later[0].n}-{later[-1].n}" if later else "later turns"
        self.rows += [
            Row(
                f"prompt tokens per turn, {span} (mean)",
                f"{with_later:.0f} (summary + latest turns)",
                f"{full_later:.0f} (whole history)",
                fewer(with_later, full_later),
                "≥ 73 % fewer (the seed)",
            ),
            Row(
                f"prompt tokens per turn, all {len(turns)} turns (mean)",
                f"{with_all:.0f}",
                f"{full_all:.0f}",
                fewer(with_all, full_all),
            ),
            Row(
                f"prompt tokens at turn {turns[-1].n}",
                f"{turns[-1].prompt_tokens}",
                f"{turns[-1].full}",
                fewer(turns[-1].prompt_tokens, turns[-1].full),
            ),
        ]
        spent = talk.summary_tokens()
        net = with_all + spent / len(turns)
        self.rows += [
            Row(
                "… counting the summary jobs' own tokens, spread over the turns",
                f"{net:.0f} ({spent} tokens in {len(talk.summary_runs)} jobs)",
                f"{full_all:.0f}",
                fewer(net, full_all),
            ),
            Row(
                f"… against only the latest {settings.chat_history_messages} messages, no summary (forgets)",
                f"{with_later:.0f}",
                f"{window_later:.0f}",
                f"{with_later / window_later:.2f}x",
            ),
        ]

    def per_turn(self, talk: session.Conversation) -> None:
        """The facts the latest summary kept, the check of the counting method, the per-turn table."""
        turns = talk.turns
        kept = [t.fact for t in turns if t.fact]
        final = talk.summaries[-1].content.lower() if talk.summaries else ""
        found = [f for f in kept if f.lower() in final]
        self.rows.append(
            Row("facts told in the talk that the latest summary still names", f"{len(found)} of {len(kept)}", "—", "—")
        )
        matched = sum(t.rebuilt == t.prompt_tokens for t in turns)
        self.rows.append(
            Row(
                "check: prompts rebuilt from the database = llama-server's count of what was sent",
                f"{matched} of {len(turns)} turns",
                "—",
                "—",
                "all",
            )
        )
        self.extra += [
            "Per turn (every 5th): prompt tokens as sent / whole history / latest messages only; summary version used",
            "",
            "| turn | sent | whole history | latest only | summary version | history messages |",
            "| --- | --- | --- | --- | --- | --- |",
            *[
                f"| {t.n} | {t.prompt_tokens} | {t.full} | {t.window} | {t.summary_version} | {t.history_used} |"
                for t in turns
                if t.n == 1 or t.n % 5 == 0
            ],
            "",
        ]
        if talk.summaries:
            self.notes.append(f"latest summary (v{talk.summaries[-1].version}): {talk.summaries[-1].content!r}")

    def session_jobs(self, talk: session.Conversation) -> None:
        runs = [r for r in talk.summary_runs if r.job["status"] == "succeeded" and str(r.job["id"]) in talk.direct]
        if not runs:
            self.notes.append("no session summary job ran")
            return
        pairs = [(r, talk.direct[str(r.job["id"])]) for r in runs]
        took = [r.finished - r.started for r in runs]
        direct = [d.seconds for _, d in pairs]
        overhead = [(r.finished - r.started - session.llm_seconds(r)) * 1000 for r in runs]
        waits = [r.started - dt.datetime.fromisoformat(r.job["created_at"]).timestamp() for r in runs]
        usage = [((r.job["result"] or {}).get("usage") or {}) for r in runs]
        same_tokens = sum(
            u.get("prompt_tokens") == d.prompt_tokens and u.get("completion_tokens") == d.completion_tokens
            for u, (_, d) in zip(usage, pairs, strict=True)
        )
        tokens = [int(u.get("completion_tokens", 0)) for u in usage]
        self.rows += [
            Row(
                f"session summary job, started → finished, p50 / p99 ({len(runs)} jobs)",
                f"{pct(took, 0.5):.2f} / {pct(took, 0.99):.2f} s",
                f"{pct(direct, 0.5):.2f} / {pct(direct, 0.99):.2f} s (same fold, direct)",
                f"{pct(took, 0.5) / pct(direct, 0.5):.2f}x / {pct(took, 0.99) / pct(direct, 0.99):.2f}x",
            ),
            Row(
                "… of which outside the LLM call (job shell, reads, write), p50 / p99",
                f"{pct(overhead, 0.5):.0f} / {pct(overhead, 0.99):.0f} ms",
                "—",
                "—",
            ),
            Row(
                "… queued → started, p50 / p99",
                f"{pct(waits, 0.5) * 1000:.0f} / {pct(waits, 0.99) * 1000:.0f} ms",
                "—",
                "—",
            ),
            Row(
                "… completion tokens per job, p50 (max PROTOSTAR_SUMMARY_MAX_TOKENS)",
                f"{pct([float(t) for t in tokens], 0.5):.0f}",
                "—",
                "—",
            ),
            Row(
                "check: the direct fold's prompt and completion tokens = the job's",
                f"{same_tokens} of {len(runs)} jobs",
                "—",
                "—",
                "all",
            ),
        ]

    def document(self, run: document.DocumentRun) -> None:
        result = run.job.job["result"] or {}
        took = run.job.finished - run.job.started
        stages = sorted({str(d.get("stage")) for _, k, d in run.job.events if k == "progress"})
        self.rows.append(
            Row(
                f"document summary, {run.name} ({run.chunks} chunks, {run.tokens_before} tokens)",
                f"{took:.1f} s, {result.get('llm_calls')} calls ({', '.join(stages)}), "
                f"{result.get('tokens_before')} → {result.get('tokens_after')} tokens",
                f"{run.direct.seconds:.1f} s, {run.direct.calls} calls (same fold, direct)",
                f"{took / run.direct.seconds:.2f}x",
            )
        )
        ours = took / max(int((result.get("usage") or {}).get("completion_tokens", 0)), 1)
        direct = run.direct.seconds / max(run.direct.completion_tokens, 1)
        self.rows.append(
            Row(
                "… per completion token (the model writes summaries of its own length each time)",
                f"{ours * 1000:.0f} ms",
                f"{direct * 1000:.0f} ms",
                f"{ours / direct:.2f}x",
            )
        )

    def beat(self, run: beat.BeatRun, settings: Any) -> None:
        minutes = run.window / 60
        ours = run.finished / minutes
        direct = run.direct_folds / (run.direct_seconds / 60)
        self.rows += [
            Row(
                f"summary jobs finished per minute at {run.sessions} stale sessions ({minutes:g} min from 1st tick)",
                f"{ours:.1f} ({run.finished} jobs, {run.failed} failed)",
                f"{direct:.1f} (same folds direct, {settings.summary_concurrency} threads)",
                f"{ours / direct:.2f}" if direct else "—",
            ),
            Row(
                "… completion tokens per minute (the model's summaries vary in length)",
                f"{run.tokens / minutes:.0f}",
                f"{run.direct_tokens / (run.direct_seconds / 60):.0f}",
                f"{(run.tokens / minutes) / (run.direct_tokens / (run.direct_seconds / 60)):.2f}"
                if run.direct_tokens
                else "—",
            ),
            Row(
                "… jobs beat queued per tick",
                " / ".join(map(str, run.per_tick)) or "0",
                f"batch {settings.summary_batch}",
                "—",
            ),
            Row(
                "… job started → finished, p50 / p99",
                f"{pct(run.durations, 0.5):.2f} / {pct(run.durations, 0.99):.2f} s",
                "—",
                "—",
            ),
            Row(
                f"… the tick's stale-session scan over {run.sessions} stale sessions, p50 / p99",
                f"{pct(run.scan_ms, 0.5):.1f} / {pct(run.scan_ms, 0.99):.1f} ms",
                "—",
                "—",
            ),
            Row("check: stale sessions summarized more than once", str(run.summarized_twice), "—", "—", "0"),
        ]

    def render(self, args: argparse.Namespace, elapsed: float) -> str:
        run = (
            f"{args.turns} turns · answers ≤ {args.max_tokens} tokens · {args.stale} stale sessions, "
            f"{args.beat_minutes:g} min of beat"
        )
        return markdown(
            "summary", run, elapsed, self.rows, ratio="difference / ratio", extra=self.extra, notes=self.notes
        )


def run_phases(args: argparse.Namespace, system: System, report: Report) -> None:
    settings, llm = system.settings, system.stack.llm
    assert llm is not None  # summary_env leaves PROTOSTAR_LLM_BASE_URL empty
    endpoint = (llm.base_url, llm.api_key, settings.llm_model)
    direct = Direct(*endpoint)
    key, tenant_id = system.tenant_key("bench-summary")
    try:
        if "1" in args.phases:
            print(f"1/3 a {args.turns}-turn conversation through the API...", flush=True)
            clock = time.perf_counter()
            talk = session.hold(system, key, args.turns, direct)
            print(f"    {time.perf_counter() - clock:.0f} s; counting prompts...", flush=True)
            session.count_prompts(talk, direct, settings)
            report.conversation(talk, settings)
            report.session_jobs(talk)
        if "2" in args.phases:
            print(f"2/3 document summary of {args.document.name} (starting an ingest worker)...", flush=True)
            system.start_ingest_worker()
            report.document(document.summarize(system, key, tenant_id, args.document, direct))
            system.stop(f"worker-{INGEST_WORKER}")
        if "3" in args.phases:
            print(f"3/3 beat at {args.stale} stale sessions...", flush=True)
            report.beat(beat.run(system, endpoint, args.stale, args.beat_minutes, args.baseline_seconds), settings)
    finally:
        direct.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = arguments("summary", __doc__)
    p.add_argument("--turns", type=int, default=60, help="questions in the conversation")
    p.add_argument("--max-tokens", type=int, default=128, help="PROTOSTAR_LLM_MAX_TOKENS: longest answer")
    p.add_argument("--document", type=Path, default=DOCUMENT, help="the file of the document summary phase")
    p.add_argument("--stale", type=int, default=1000, help="stale sessions seeded for the beat phase")
    p.add_argument("--beat-minutes", type=float, default=3, help="minutes of beat measured from its first tick")
    p.add_argument("--baseline-seconds", type=float, default=60, help="seconds of direct folds (beat's baseline)")
    p.add_argument("--phases", default="123", help="which phases to run: any of 1-3")
    p.add_argument("--log-level", default="INFO", help="PROTOSTAR_LOG_LEVEL of the API and workers")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    os.chdir(ROOT)
    print("starting embedded services (with llama-server), the API, the chat and summary workers...", flush=True)
    with launched(lambda data_dir: summary_env(data_dir, args), LOG) as system:
        system.start_worker("chat")
        system.start_worker("summary")
        wait_idle(system.pid("api"), "the API")
        machine = MachineShare()
        report = Report()
        run_phases(args, system, report)
        report.notes.append(machine.describe())
        text = report.render(args, time.perf_counter() - started)
        publish("summary", text)
        return 0


if __name__ == "__main__":
    sys.exit(main())
