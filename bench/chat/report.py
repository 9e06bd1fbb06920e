"""From the phases' streams and the processes' traces to the table: figures, hops, relay, pool."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from bench.chat.cancels import STAGES, CancelRun
from bench.chat.hops import Traces, hop_table, ms, probe_table, span, worker_time_table
from bench.chat.phases import Phase
from bench.chat.streams import Stream
from bench.common import Row, pct

GOAL_P50, GOAL_P99 = 10.0, 25.0  # ms the path may add to the time to first token


def pp(values: list[float], unit: str = "") -> str:
    return f"{pct(values, 0.5):.1f} / {pct(values, 0.99):.1f}{unit}" if values else "-"


def added(path: list[float], direct: list[float]) -> str:
    if not path or not direct:
        return "-"
    return f"{pct(path, 0.5) - pct(direct, 0.5):+.1f} / {pct(path, 0.99) - pct(direct, 0.99):+.1f} ms"


def tokens_per_s(stream: Stream) -> float | None:
    t = stream.tokens
    return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 2 and t[-1] > t[0] else None


def gaps(streams: list[Stream]) -> list[float]:
    return [b - a for s in streams for a, b in zip(s.tokens, s.tokens[1:], strict=False)]


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    best = now = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


@dataclass
class Report:
    traces: Traces
    llm_parallel: int
    rows: list[Row] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, metric: str, value: str, baseline: str = "", ratio: str = "", goal: str = "") -> None:
        self.rows.append(Row(metric, value, baseline, ratio, goal))

    # --- cancel latency by stage ------------------------------------------------------------------------

    def cancels(self, runs: list[CancelRun]) -> None:
        for stage in STAGES:
            of = [r for r in runs if r.stage == stage]
            if not of:
                continue
            lat = [r.latency * 1000 for r in of if r.latency is not None]
            other = [r for r in of if r.latency is None]
            outcome = f"{len(lat)}/{len(of)} cancelled"
            if other:
                ends = sorted({r.status or (r.error or "no end")[:40] for r in other})
                outcome += f"; else {', '.join(ends)}"
            after = sum(r.tokens_after for r in of)
            self.add(
                f"cancel → job cancelled at the client, cancel sent at {stage} (p50 / max)",
                f"{pct(lat, 0.5):.0f} / {max(lat):.0f} ms" if lat else "-",
                f"{outcome}; {after} tokens after the cancel",
                "",
                "≤ 500 ms",
            )

    # --- figure 1: time to first token ------------------------------------------------------------------

    def ttft(self, phase: Phase, *, parallel: int) -> None:
        path, direct = phase.of("path"), phase.of("direct")
        p_ms, d_ms = ms(s.ttft for s in path), ms(s.ttft for s in direct)
        where = f"llama-server `--parallel {parallel}`"
        self.add(
            f"Time to first token, {phase.concurrency} stream(s) at once, p50 / p99 ms "
            f"(path n={len(p_ms)}, direct n={len(d_ms)}; {where}): POST message → first SSE `token`",
            pp(p_ms),
            f"direct stream to llama-server, same messages {pp(d_ms)}",
            added(p_ms, direct=d_ms),
            f"≤ +{GOAL_P50:g} / ≤ +{GOAL_P99:g} ms",
        )
        stamps = [self.traces.stamps(s) for s in path]
        retrieve = ms(span(st, "w.retrieve_start", "w.retrieve_end") for st in stamps)
        if retrieve:
            embed = ms(span(st, "w.embed_start", "w.embed_end") for st in stamps)
            self.add(
                "  of which retrieval, p50 / p99 ms (query embedding + hybrid search, tenant without documents)",
                pp(retrieve),
                f"query embedding alone {pp(embed)}",
            )
            self.add(
                "  added without retrieval (p50 path - p50 retrieval - p50 direct)",
                f"{pct(p_ms, 0.5) - pct(retrieve, 0.5) - pct(d_ms, 0.5):+.1f} ms",
                "",
                "",
                f"≤ +{GOAL_P50:g} ms",
            )
            llm = ms(span(st, "w.llm_request", "w.tok0_start") for st in stamps)
            self.add(
                "  the LLM as the worker sees it: request → first text chunk, p50 / p99 ms",
                pp(llm),
                f"direct {pp(d_ms)}",
                added(llm, direct=d_ms),
            )
            own = ms(s.ttft for s in phase.of("chatllm"))
            if own:
                self.add(
                    "  the worker's LLM client alone: `ChatLLM.generate` (sync OpenAI client) from a thread of the "
                    "bench, request → first text, p50 / p99 ms",
                    pp(own),
                    f"direct {pp(d_ms)}",
                    added(own, direct=d_ms),
                )
            before = ms(span(st, "c.sent", "w.llm_request") for st in stamps)
            after = ms(span(st, "w.tok0_start", "c.tok0") for st in stamps)
            self.add(
                "  the path's own time: POST → LLM request sent · first text chunk → client, p50 / p99 ms",
                f"{pp(before)} · {pp(after)}",
            )

    def hops(self, phase: Phase) -> None:
        self.extra += hop_table(self.traces, phase) + worker_time_table(self.traces, phase)

    def probes(self, rows: list[tuple[str, float, float]]) -> None:
        self.extra += probe_table(rows)

    # --- figure 2: relaying tokens ------------------------------------------------------------------------

    def relay(self, phase: Phase) -> None:
        path, direct = phase.of("path"), phase.of("direct")
        per_token = [token for s in path for token in self.traces.relay(s) or []]
        if per_token:
            lag = [1000 * (r[0] + r[1]) for r in per_token]
            parts = [ms(r[i] for r in per_token) for i in range(3)]
            self.add(
                f"Relay lag per token, {phase.concurrency} stream(s): LLM chunk read by the worker → client has "
                f"the SSE event, p50 / p99 ms (tokens 2…n, n={len(lag)})",
                pp(lag),
                "a direct client reads the chunk when the worker does: 0",
                f"+{pct(lag, 0.5):.1f} / +{pct(lag, 0.99):.1f} ms",
            )
            self.add(
                "  split, p50 ms: worker XADDs → API's XREAD has it · API → client (· the worker's XADD call)",
                " · ".join(f"{pct(p, 0.5):.2f}" for p in parts),
                "p99: " + " · ".join(f"{pct(p, 0.99):.2f}" for p in parts),
            )
        p_gap, d_gap = ms(gaps(path)), ms(gaps(direct))
        self.add(
            f"  gap between tokens at the client, {phase.concurrency} stream(s), p50 / p99 ms",
            pp(p_gap),
            f"direct {pp(d_gap)}",
            f"{pct(p_gap, 0.5) / pct(d_gap, 0.5):.2f}x / {pct(p_gap, 0.99) / pct(d_gap, 0.99):.2f}x"
            if p_gap and d_gap
            else "",
        )
        if phase.concurrency == 1:
            p_rate = [r for s in path if (r := tokens_per_s(s)) is not None]
            d_rate = [r for s in direct if (r := tokens_per_s(s)) is not None]
            o_rate = [r for s in phase.of("chatllm") if (r := tokens_per_s(s)) is not None]
            if p_rate and d_rate:
                self.add(
                    "Tokens/s to one client, one stream (median over streams, first → last token)",
                    f"{statistics.median(p_rate):.0f}",
                    f"direct {statistics.median(d_rate):.0f}"
                    + (f" · `ChatLLM` alone {statistics.median(o_rate):.0f}" if o_rate else ""),
                    f"{statistics.median(p_rate) / statistics.median(d_rate):.2f}",
                )
        else:
            rates = {kind: self._delivered(phase, kind) for kind in ("path", "direct")}
            if all(rates.values()):
                self.add(
                    f"Tokens/s delivered to {phase.concurrency} clients (all tokens / round's first POST → last "
                    f"token; {len(phase.rounds) // 2} rounds each)",
                    f"{rates['path']:.0f}",
                    f"direct {rates['direct']:.0f}",
                    f"{rates['path'] / rates['direct']:.2f}",
                )
        last_p = ms(s.tokens[-1] - s.sent for s in path if s.tokens)
        last_d = ms(s.tokens[-1] - s.sent for s in direct if s.tokens)
        self.add(
            f"  request → last token, {phase.concurrency} stream(s), p50 / p99 ms "
            f"(tokens per answer: path {statistics.fmean(len(s.tokens) for s in path):.1f}, "
            f"direct {statistics.fmean(len(s.tokens) for s in direct):.1f})",
            pp(last_p),
            f"direct {pp(last_d)}",
            added(last_p, direct=last_d),
        )

    def _delivered(self, phase: Phase, kind: str) -> float:
        tokens = sum(len(s.tokens) for s in phase.of(kind))
        wall = sum(last - first for k, first, last in phase.rounds if k == kind)
        return tokens / wall if wall > 0 else 0.0

    def cpu(self, phase: Phase) -> None:
        path, direct = phase.cpu["path"].seconds, phase.cpu["direct"].seconds
        p_tok, d_tok = phase.tokens("path"), phase.tokens("direct")
        if not p_tok or not d_tok:
            return
        per_token, xadd = [], []
        for s in phase.of("path"):
            trace = self.traces.worker.get(s.job_id or "", {})
            if "cpu_first_token" in trace and "cpu_generate_end" in trace and len(trace["tokens"]) > 1:
                per_token.append((trace["cpu_generate_end"] - trace["cpu_first_token"]) / (len(trace["tokens"]) - 1))
                xadd.append(trace.get("cpu_token_xadd", 0.0) / len(trace["tokens"]))
        llm = 1e3 * direct["llm"] / d_tok
        if per_token:
            value = 1e6 * statistics.median(per_token)
            self.add(
                f"Worker CPU per token relayed, {phase.concurrency} stream(s): the task thread after the first "
                f"token, median µs (of which the XADD call {1e6 * statistics.median(xadd):.0f} µs, the rest the "
                "OpenAI client reading the chunk)",
                f"{value:.0f} µs",
                f"llama-server CPU per token generated (direct) {1e3 * llm:.0f} µs",
                f"{value / (1e3 * llm):.2f}x",
            )
        jobs = len(phase.of("path"))
        self.add(
            f"  CPU per token, whole processes, path / direct, {phase.concurrency} stream(s) (ms; per-job work "
            f"included: {jobs} jobs, {p_tok / jobs:.0f} tokens each; direct: what they burn idle)",
            " · ".join(
                f"{n} {1e3 * path[n] / p_tok:.2f} / {1e3 * direct[n] / d_tok:.2f}"
                for n in ("worker", "api", "redis", "postgres")
            ),
            f"llama-server path {1e3 * path['llm'] / p_tok:.2f} / direct {llm:.2f} · client path "
            f"{1e3 * path['client'] / p_tok:.2f} / direct {1e3 * direct['client'] / d_tok:.2f}",
            f"path total {1e3 * sum(path.values()) / p_tok:.2f} / direct {1e3 * sum(direct.values()) / d_tok:.2f}",
        )

    # --- figure 3: the chat worker's pool -----------------------------------------------------------------

    def pool(self, phase: Phase) -> None:
        traces = [(s, self.traces.worker.get(s.job_id or "")) for s in phase.of("path")]
        traced = [(s, t) for s, t in traces if t and "generate_end" in t]
        if not traced:
            return
        rounds = self._by_round(phase, traced)
        tasks = max(max_overlap([(t["prerun"], t["postrun"]) for _, t in r]) for r in rounds)
        generating = max(max_overlap([(t["generate_start"], t["generate_end"]) for _, t in r]) for r in rounds)
        decoding = max(
            max_overlap([(t["tokens"][0][0], t["tokens"][-1][1]) for _, t in r if t["tokens"]]) for r in rounds
        )
        waited = ms(t["acquire_end"] - t["acquire_start"] for _, t in traced)
        self.add(
            f"Streams in flight in ONE chat worker (threads pool, concurrency 50), {phase.name}: max tasks running / "
            "in `generate` (waiting on the LLM) / receiving tokens at once",
            f"{tasks} / {generating} / {decoding}",
            f"{phase.concurrency} requested; llama-server decodes {self.llm_parallel} at once",
        )
        self.add(
            "  LLM limiter wait p50 / max ms (PROTOSTAR_LLM_CONCURRENCY and _TENANT_ = 50 for this run)",
            f"{pct(waited, 0.5):.1f} / {max(waited):.1f}",
        )
        start = ms(t["prerun"] - s.sent for s, t in traced)
        handed = ms(t["prerun"] - t["received"] for _, t in traced if t.get("received"))
        claim = ms(t["claim_end"] - t["claim_start"] for _, t in traced)
        request = ms(t["llm_request"] - s.sent for s, t in traced)
        self.add(
            "  POST → task started · the consumer has it → a pool thread runs it · claim · POST → LLM request "
            "sent, p50 / max ms",
            " · ".join(f"{pct(v, 0.5):.1f} / {max(v):.1f}" for v in (start, handed, claim, request) if v),
        )

    @staticmethod
    def _by_round(phase: Phase, traced: list[tuple[Stream, dict[str, Any]]]) -> list[list[tuple[Stream, Any]]]:
        starts = sorted(first for kind, first, _ in phase.rounds if kind == "path")
        groups: list[list[tuple[Stream, Any]]] = [[] for _ in starts]
        for s, t in traced:
            index = max(i for i, first in enumerate(starts) if first <= s.sent)
            groups[index].append((s, t))
        return [g for g in groups if g]

    # --- checks -------------------------------------------------------------------------------------------

    def checks(self, phases: list[Phase]) -> None:
        runs = [s for p in phases for s in p.runs]
        failed = [s for s in runs if s.error or not s.tokens]
        if failed:
            self.notes.append(
                f"{len(failed)} of {len(runs)} streams failed or got no token (left out of the figures): "
                + "; ".join(sorted({f"{s.kind}: {s.error or 'no token'}" for s in failed})[:5])
            )
        resumed = [s for s in runs if s.resumed]
        if resumed:
            self.notes.append(
                f"{len(resumed)} of {sum(s.kind == 'path' for s in runs)} path streams had their SSE response "
                f"broken by the API and resumed with Last-Event-ID ({sum(s.resumed for s in resumed)} times in all; "
                "the API's tracebacks are in chat.log); their times include the resume"
            )
        path_prompt = {int(r["usage"]["prompt_tokens"]) for r in self.traces.results.values() if r.get("usage")}
        direct_prompt = {s.prompt_tokens for s in runs if s.kind == "direct" and s.prompt_tokens}
        self.notes.append(
            f"prompt tokens as llama-server counted them: path {sorted(path_prompt)}, direct {sorted(direct_prompt)} "
            "(the same messages: system instructions + the question, no sources, no history)"
        )
