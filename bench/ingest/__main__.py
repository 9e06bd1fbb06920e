"""Ingest benchmark: what Protostar's ingestion and search cost next to the bare libraries, in one run.

    .venv/bin/python -m bench.ingest [--pages 100] [--embed-texts 512] [--rows 100000] [--search-reps 30]
    .venv/bin/python -m bench.ingest --phases 1     # one phase only (2-4 ingest the whole corpus first)

About 7-9 minutes on 2 cores, of which about 2.5 ingesting the whole corpus and 1 filling 100,000 rows.

Starts its own embedded Redis/PostgreSQL/S3 in a temp dir on free ports, applies migrations, runs the API
(``protostar.commands.api``) and ONE ingest worker (``commands.worker``, prefork, concurrency 1).

1. End-to-end PDF pages/s per worker process: the corpus's text PDFs and a generated N-page PDF uploaded
   through POST /v1/documents, one at a time, each job followed on its event stream; pages / (finished_at -
   started_at), and / (finished_at - submit). Baseline: ``partition_pdf(strategy="fast")`` of the same bytes
   in a separate warm process (``bench.ingest.bare_parse``), alternating file by file with the uploads.
   Also the job's time per stage (download, parse, chunk, embed, store, shell) from its progress events.
2. Embedding throughput, texts/s and tokens/s, one thread, on real chunks of the corpus: the pipeline's own
   ``embed_chunks`` (its batching, the configured embedder) vs the bare ``SentenceTransformer.encode``; the
   ONNX int8 ``OnnxEmbedder.embed`` vs the torch ``LocalEmbedder.embed`` (tokens/s per core).
3. Retrieval quality on ``qa.jsonl`` after ingesting the whole corpus: recall@5 and MRR@5 of POST /v1/search
   (hybrid) vs vector-only (exact) and full-text-only rankings of the same chunks; then the ONNX int8 and the
   torch embedders each embed every chunk of the corpus (tokens/s per core) and rank, in the same run, the
   chunks of the questions' documents and then the whole corpus (exact cosine, hybrid ``search()`` over a copy
   of those chunks in a tenant of each model, and full text), on ``qa.jsonl`` and on the benchmark's own
   questions (``bench.ingest.models``).
4. Search latency p50/p99 with 100,000 chunks in the table: ``protostar.search.search()`` vs a bare pgvector
   ``ORDER BY embedding <=> q LIMIT 5``, alternating, from this process.
5. Peak RSS (``VmHWM``) of the ingest pool child during phase 1 (and after the whole corpus) vs the baseline
   parser process's.
6. OCR pages/s next to text-layer pages/s: a generated ``--ocr-pages``-page text PDF and its scan (image-only
   PDF) uploaded in turn (``bench.ingest.ocr``).

Results: a markdown table on stdout and in ``bench/results/ingest.md``; process output and query plans in
``bench/results/ingest.log``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from bench.common import RESULTS, ROOT, MachineShare, Row, arguments, markdown, pct, publish, wait_idle
from bench.harness import INGEST_WORKER, System, bench_env, launched
from bench.ingest import corpus, e2e, embedding, latency, models, ocr, retrieval
from bench.ingest.processes import BareParser, MemorySampler

LOG = RESULTS / "ingest.log"
MB = 1024


class Report:
    """Rows of the table, kept in the brief's order (figure 1 to 5) whatever order the phases run in."""

    def __init__(self) -> None:
        self.figures: list[tuple[int, Row]] = []
        self.figure = 0
        self.extra: list[str] = []
        self.notes: list[str] = []

    def add(self, metric: str, value: str, baseline: str = "", ratio: str = "", goal: str = "") -> None:
        self.figures.append((self.figure, Row(metric, value, baseline, ratio, goal)))

    @property
    def rows(self) -> list[Row]:
        return [row for _, row in sorted(self.figures, key=lambda fr: fr[0])]

    def render(self, args: argparse.Namespace, elapsed: float) -> str:
        run = (
            f"phases {args.phases} · {args.pages}-page PDF · {args.embed_texts} texts x {args.embed_rounds} rounds · "
            f"{args.rows:,} rows · {args.search_reps} search rounds"
        )
        return markdown("ingest", run, elapsed, self.rows, extra=self.extra, notes=self.notes)


def report_pages(report: Report, runs: list[e2e.FileRun]) -> None:
    report.figure = 1
    pages = sum(r.pages for r in runs)
    bare = pages / sum(r.bare for r in runs)
    stages = e2e.stage_totals(runs)
    job = pages / sum(r.job for r in runs)
    submit = pages / sum(r.submit for r in runs)
    parse = pages / stages["parse"]
    baseline = f"bare `partition_pdf` fast {bare:.1f}"
    report.add(
        f"End-to-end PDF pages/s, one ingest child (prefork c=1), job started→finished ({len(runs)} files, "
        f"{pages} pages)",
        f"{job:.1f}",
        baseline,
        f"{job / bare:.2f}",
        "≥ 0.8",
    )
    report.add("  submit→finished (upload, queue wait, job)", f"{submit:.1f}", baseline, f"{submit / bare:.2f}")
    report.add("  parse stage of the job alone", f"{parse:.1f}", baseline, f"{parse / bare:.2f}")
    total = sum(stages.values())
    report.add(
        "  share of job time by stage",
        " · ".join(f"{name} {100 * s / total:.0f}%" for name, s in stages.items()),
    )
    report.extra += ["End-to-end, per file (seconds; stages from the job's progress events):", ""]
    report.extra += [*e2e.file_table(runs), ""]


def report_ocr(report: Report, pairs: list[ocr.Pair]) -> None:
    report.figure = 6
    r = ocr.rates(pairs)
    pages = sum(p.pages for p in pairs)
    report.add(
        f"OCR pages/s, scanned PDF, one ingest child, job started→finished ({len(pairs)} x {pairs[0].pages} pages)",
        f"{r['scan_job']:.2f}",
        f"the same pages with their text layer {r['text_job']:.2f}",
        f"{r['scan_job'] / r['text_job']:.3f}",
    )
    report.add(
        f"  parse stage alone ({pages} pages each)",
        f"{r['scan_parse']:.2f}",
        f"text layer {r['text_parse']:.2f}",
        f"{r['scan_parse'] / r['text_parse']:.3f}",
    )


def report_rss(report: Report, sampler: MemorySampler, bare_kb: int | None, docs: retrieval.Corpus | None) -> None:
    report.figure = 5
    idle, pdf, every = (sampler.peaks.get(label) for label in ("idle", "pdf", "corpus"))
    if pdf and bare_kb:
        report.add(
            f"Peak RSS of the ingest pool child (VmHWM), PDF phase ({len(pdf.children)} child)",
            f"{pdf.hwm_kb / MB:,.0f} MB",
            f"bare parser process {bare_kb / MB:,.0f} MB",
            f"{pdf.hwm_kb / bare_kb:.2f}x",
            "≤ 1536 MB",
        )
    if idle:
        report.add("  the child after its warm-up, before any document", f"{idle.hwm_kb / MB:,.0f} MB")
    if every:
        report.add(
            f"  after the whole corpus, every format ({len(every.children)} pool child(ren) seen)",
            f"{every.hwm_kb / MB:,.0f} MB",
            "",
            "",
            "≤ 1536 MB",
        )
        helpers = ", ".join(f"{name} {kb / MB:,.0f} MB" for name, kb in every.helpers.items())
        if helpers:
            report.notes.append(f"processes the ingest child started (converters), peak RSS each: {helpers}")
    scans = sampler.peaks.get("ocr")
    if scans:
        report.add("  after the OCR phase (6)", f"{scans.hwm_kb / MB:,.0f} MB", "", "", "≤ 1536 MB")
    if docs is not None and docs.runs:
        grown = {
            name: (sampler.peak_between(r.started, r.finished), sampler.rss_before(r.started))
            for name, r in docs.runs.items()
        }
        top = sorted(grown.items(), key=lambda kv: kv[1][1] - kv[1][0])[:4]
        report.notes.append(
            "pool-child RSS while a corpus document was ingested (sampled every 0.2 s), largest growth first: "
            + ", ".join(f"{name} {before / MB:,.0f} → {peak / MB:,.0f} MB" for name, (peak, before) in top)
        )


def report_embedding(report: Report, result: embedding.Result) -> None:
    report.figure = 2
    v = result.variants
    bare = v["bare"]

    def fmt(t: embedding.Throughput) -> str:
        return f"{t.texts_per_s:.1f} ({t.tokens_per_s:,.0f})"

    windows = ", ".join(f"{name} {n}" for name, n in result.windows)
    report.add(
        f"Embedding texts/s (tokens/s), 1 thread, batch {result.batch}, real chunks in windows of one "
        f"document ({windows}) x {bare.texts // sum(n for _, n in result.windows)} rounds: `embed_chunks` "
        f"({result.pipeline_model})",
        fmt(v["pipeline"]),
        f"bare `encode` per window {fmt(bare)}",
        f"{v['pipeline'].texts_per_s / bare.texts_per_s:.2f}",
    )
    paired = sorted(t / o for t, o in zip(result.per_window["torch"], result.per_window["onnx"], strict=True))
    report.add(
        f"  ONNX int8 `OnnxEmbedder.embed` of a window's texts in one call, tokens/s per core (ratio: median of "
        f"{len(paired)} windows run back to back, range {paired[0]:.2f}-{paired[-1]:.2f}; of the sums "
        f"{v['onnx'].tokens_per_s / v['torch'].tokens_per_s:.2f})",
        f"{v['onnx'].tokens_per_s:,.0f}",
        f"torch `LocalEmbedder.embed` {v['torch'].tokens_per_s:,.0f}",
        f"{statistics.median(paired):.2f}",
        "≥ 2.5",
    )
    report.add(
        "  torch `LocalEmbedder.embed` of a window's texts in one call",
        fmt(v["torch"]),
        f"bare `encode` per window {fmt(bare)}",
        f"{v['torch'].texts_per_s / bare.texts_per_s:.2f}",
    )
    p = result.padded
    report.add(
        "  tokens the model computes, padding included, batches cut: " + " / ".join(p),
        " / ".join(f"{n:,}" for n in p.values()),
    )


def report_retrieval(report: Report, scores: dict[str, retrieval.Score], docs: retrieval.Corpus) -> None:
    report.figure = 3
    h, v, f = scores["hybrid"], scores["vector"], scores["full_text"]
    n = len(corpus.questions())
    best = max(v.recall, f.recall)
    report.add(
        f"Retrieval recall@5, `qa.jsonl` ({n} questions), POST /v1/search (hybrid RRF)",
        f"{h.recall:.2f}",
        f"vector only (exact) {v.recall:.2f} · full text only {f.recall:.2f}",
        f"{h.recall / best:.2f} of the better" if best else "",
    )
    best = max(v.mrr, f.mrr)
    report.add(
        "  MRR@5",
        f"{h.mrr:.2f}",
        f"vector only {v.mrr:.2f} · full text only {f.mrr:.2f}",
        f"{h.mrr / best:.2f} of the better" if best else "",
    )
    for name, s in scores.items():
        if s.misses:
            report.notes.append(f"retrieval misses ({name}): " + "; ".join(s.misses))
    report.notes.append(
        f"whole corpus ingested for phase 3: {len(docs.names)} documents, {docs.chunks:,} chunks in "
        f"{docs.seconds:.0f} s by the one child; failed: "
        + ("; ".join(f"{k} ({v})" for k, v in docs.failed.items()) or "none")
    )


def report_models(report: Report, result: models.Comparison, *, whole: bool) -> None:
    report.figure = 3
    onnx, torch, full = result.scores["onnx"], result.scores["torch"], result.scores["full text"]
    scope = (
        f"the whole corpus ({result.chunks:,} chunks of {len(result.documents)} documents)"
        if whole
        else f"the {result.chunks} chunks of {', '.join(result.documents)}"
    )
    own = f"{result.own_questions} own questions" + (" (drawn from the whole corpus)" if whole else "")
    for key, label in (
        ("qa", f"vector only (exact), `qa.jsonl` ({len(corpus.questions())} questions)"),
        ("own", f"vector only (exact), {own}"),
        ("hybrid qa", "hybrid `search()` (each model's copy of the chunks in its own tenant), `qa.jsonl`"),
        ("hybrid own", f"hybrid `search()`, {own}"),
    ):
        o, t = onnx[key], torch[key]
        report.add(
            f"  over {scope}, {label}: ONNX int8 recall@5 / MRR@5",
            f"{o.recall:.3f} / {o.mrr:.3f}",
            f"torch {t.recall:.3f} / {t.mrr:.3f}",
            f"{o.recall - t.recall:+.3f} / {o.mrr - t.mrr:+.3f}",
            "within 0.02",
        )
    report.add(
        f"  over {scope}, full text only (the same for both models), `qa.jsonl` · {own}: recall@5 / MRR@5",
        f"{full['qa'].recall:.3f} / {full['qa'].mrr:.3f} · {full['own'].recall:.3f} / {full['own'].mrr:.3f}",
    )
    where = "whole corpus" if whole else "questions' documents"
    report.extra += [
        f"`qa.jsonl` over {scope}: rank of each question's first answering chunk in each list (hybrid: "
        f"`search()` asked for {models.DEPTH}; the worker's rows are the tenant `POST /v1/search` searched, "
        f"embedded by the worker with the configured model):",
        "",
        *result.table,
        "",
    ]
    for name, scores in result.scores.items():
        for key, s in scores.items():
            if s.misses:
                report.notes.append(f"misses of {name} on {key} ({where}): " + "; ".join(s.misses[:10]))
    for key, lines in result.lost.items():
        if lines:
            report.notes.append(
                f"{key} questions in the top 5 of one model's hybrid search only ({where}, {len(lines)}): "
                + "; ".join(lines[:10])
            )


def report_model_speed(report: Report, embedded: models.Embedded) -> None:
    report.figure = 3
    o, t = embedded.throughput["onnx"], embedded.throughput["torch"]
    report.add(
        f"  tokens/s per core embedding the corpus's {len(embedded.chunks):,} chunks (windows of {models.WINDOW}, "
        "taking turns)",
        f"{o.tokens_per_s:,.0f}",
        f"torch {t.tokens_per_s:,.0f}",
        f"{o.tokens_per_s / t.tokens_per_s:.2f}",
        "≥ 2.5",
    )


def report_latency(report: Report, result: latency.Latency, noise: float) -> None:
    report.figure = 4
    p50 = pct(result.protostar_ms, 0.5) / pct(result.bare_ms, 0.5)
    p99 = pct(result.protostar_ms, 0.99) / pct(result.bare_ms, 0.99)
    report.add(
        f"Search p50 / p99 (ms), {result.rows:,} chunks in one tenant, `search()` (hybrid), "
        f"n={len(result.protostar_ms)}",
        result.p(result.protostar_ms),
        f"bare `ORDER BY embedding <=> q LIMIT 5` {result.p(result.bare_ms)}",
        f"{p50:.1f}x / {p99:.1f}x",
    )
    report.add(
        "  server execution (EXPLAIN ANALYZE, each question once) p50 / max (ms)",
        f"{pct(result.server_ms, 0.5):.2f} / {max(result.server_ms):.2f}",
        f"{pct(result.bare_server_ms, 0.5):.2f} / {max(result.bare_server_ms):.2f}",
        f"{pct(result.server_ms, 0.5) / pct(result.bare_server_ms, 0.5):.1f}x",
    )
    ctes = {name: result.cte_ms[name] for name in latency.CTES if name in result.cte_ms}
    report.add(
        "  of which, p50 (ms): " + " · ".join(f"CTE {name}" for name in ctes) + " (fts includes the word CTEs)",
        " · ".join(f"{pct(ms, 0.5):.2f}" for ms in ctes.values()),
    )
    if result.evidence:
        found = [rr for rr in result.evidence if rr > 0]
        report.add(
            f"  `qa.jsonl` answers in the top 5 at {result.rows:,} rows (the evidence in a hit's text, any copy): "
            "recall@5 / MRR@5",
            f"{len(found) / len(result.evidence):.2f} / {sum(result.evidence) / len(result.evidence):.3f}",
        )
    report.add("  query embedding, one question (the API does it before `search()`)", result.p(result.query_embed_ms))
    uses = {name: "HNSW" if "ix_chunks_hnsw" in plan else "no HNSW index" for name, plan in result.plans.items()}
    report.notes.append(
        f"phase 4 rows: the corpus's real chunk embeddings, each copied with Gaussian noise (sd {noise}) per "
        f"dimension and renormalised, texts of the source chunk + a copy number; COPY via store.replace_chunks "
        f"{result.copy_seconds:.0f} s with the HNSW index dropped, rebuilt by ensure_vector_index in "
        f"{result.index_seconds:.0f} s. Plans: Protostar {uses.get('protostar')}, bare {uses.get('bare')} "
        f"(EXPLAIN ANALYZE below); {result.short_answers} searches returned fewer than 5 hits"
    )


def run_phases(args: argparse.Namespace, system: System, report: Report, log: IO[str]) -> None:
    """Phase 1 and the corpus ingestion while the worker runs (its child's memory sampled), then 3, 2, 4."""
    sampler = MemorySampler(system.pid(f"worker-{INGEST_WORKER}") or 0)
    sampler.label = "idle"
    sampler.start()
    time.sleep(1.0)  # a few samples of the idle child, warmed up
    sampler.label = "pdf"
    bare_kb = None
    if "1" in args.phases:
        print("1/4 end-to-end PDF pages/s (one file at a time, baseline parser alternating)...", flush=True)
        runs, bare_kb = measure_pages(args, system, log)
        report_pages(report, runs)
    docs, key = None, ""
    if any(p in args.phases for p in "234"):
        print("    ingesting the whole corpus (for phases 2-4)...", flush=True)
        sampler.label = "corpus"
        key, tenant_id = system.tenant_key("bench-qa")
        docs = retrieval.ingest(system, key, tenant_id)
    if "6" in args.phases:
        print("6/6 OCR pages/s next to text-layer pages/s (the same pages)...", flush=True)
        sampler.label = "ocr"
        key6, _ = system.tenant_key("bench-ocr")
        report_ocr(report, ocr.run(system, key6, pages=args.ocr_pages, rounds=args.ocr_rounds))
    sampler.stop()
    report_rss(report, sampler, bare_kb, docs)
    if docs is not None:
        system.stop(f"worker-{INGEST_WORKER}")  # idle from here on: out of the way of the measurements
        measure_corpus(args, system, report, log, docs, key)


def measure_pages(args: argparse.Namespace, system: System, log: IO[str]) -> tuple[list[e2e.FileRun], int]:
    from protostar.ingest.parse import text_pdf

    key, _ = system.tenant_key("bench-pages")
    with tempfile.NamedTemporaryFile(suffix=".pdf") as warm:
        warm.write(text_pdf([["Warm up."]]))  # the PDF an ingest child warms up with: both start equal
        warm.flush()
        bare = BareParser(Path(warm.name), log)
    try:
        runs = e2e.run(system, bare, key, pages=args.pages, rounds=args.rounds)
        return runs, bare.peak_rss_kb()
    finally:
        bare.close()


def measure_corpus(
    args: argparse.Namespace, system: System, report: Report, log: IO[str], docs: retrieval.Corpus, key: str
) -> None:
    from protostar.embeddings.embed import LocalEmbedder, OnnxEmbedder, make_embedder

    embedder = make_embedder(system.settings, threads=1)  # the model the worker stored the chunks with
    embedder.embed(["warm-up"])
    if "3" in args.phases:
        print("3/4 retrieval quality on qa.jsonl...", flush=True)
        report_retrieval(report, retrieval.evaluate(system, key, docs, embedder), docs)
    system.stop("api")
    if "3" in args.phases:
        print("    ONNX int8 vs torch embedder: embedding the whole corpus with each...", flush=True)
        both = {
            "onnx": OnnxEmbedder(data_dir=system.settings.data_dir, threads=1),
            "torch": LocalEmbedder(batch_size=system.settings.embedding_batch_size, threads=1),
        }
        embedded = models.embed(models.pool(system, docs.tenant_id, docs.names), both)
        report_model_speed(report, embedded)
        for documents in ({q.document for q in corpus.questions()}, None):
            scope = "the questions' documents" if documents else "the whole corpus"
            print(f"    ranking {scope} with each model (exact, hybrid, full text)...", flush=True)
            stored = None if documents else (docs.names, embedder)
            compared = models.compare(system, docs.tenant_id, embedded, documents, args.own_questions, both, stored)
            report_models(report, compared, whole=documents is None)
    if "2" in args.phases:
        print("2/4 embedding throughput...", flush=True)
        windows = embedding.sample(system, docs.tenant_id, args.embed_texts, args.embed_window)
        report_embedding(report, embedding.measure(windows, settings=system.settings, rounds=args.embed_rounds))
    if "4" in args.phases:
        print(f"4/4 search latency: filling {args.rows:,} chunks...", flush=True)
        result = latency.fill(
            system, docs.tenant_id, rows=args.rows, docs=args.docs, noise=args.noise, model=embedder.model
        )
        print(f"    {result.rows:,} rows in {result.copy_seconds + result.index_seconds:.0f} s; timing...", flush=True)
        latency.measure(system, result, embedder, reps=args.search_reps)
        report_latency(report, result, args.noise)
        for name, plan in result.plans.items():
            log.write(f"\n--- EXPLAIN ANALYZE, {name} search, {result.rows:,} rows ---\n{plan}\n")
            report.extra += [
                f"Query plan, {name} search, {result.rows:,} rows, the first `qa.jsonl` question "
                f"(`EXPLAIN (ANALYZE, BUFFERS)`):",
                "",
                "```",
                plan,
                "```",
                "",
            ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = arguments("ingest", __doc__)
    p.add_argument("--pages", type=int, default=100, help="pages of the generated PDF in phase 1")
    p.add_argument("--rounds", type=int, default=1, help="times phase 1 uploads every PDF (new bytes each time)")
    p.add_argument("--embed-texts", type=int, default=512, help="real chunks embedded per variant and round")
    p.add_argument("--embed-rounds", type=int, default=2, help="alternating rounds of the embedding variants")
    p.add_argument("--embed-window", type=int, default=128, help="consecutive chunks taken from one document")
    p.add_argument("--own-questions", type=int, default=300, help="sentences drawn from chunks, phase 3")
    p.add_argument("--rows", type=int, default=100_000, help="chunks in the search latency tenant")
    p.add_argument("--docs", type=int, default=100, help="documents the latency tenant's chunks belong to")
    p.add_argument("--noise", type=float, default=0.03, help="Gaussian noise per dimension of the copied vectors")
    p.add_argument("--search-reps", type=int, default=30, help="rounds over the questions, per query kind")
    p.add_argument("--log-level", default="INFO", help="PROTOSTAR_LOG_LEVEL of the API and worker")
    p.add_argument("--ocr-pages", type=int, default=4, help="pages of the text PDF and its scan in phase 6")
    p.add_argument("--ocr-rounds", type=int, default=1, help="times phase 6 uploads the pair")
    p.add_argument("--phases", default="12346", help="which phases to run: any of 1-4 and 6 (5, memory, rides along)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    os.chdir(ROOT)
    print("starting embedded services, the API and one ingest worker...", flush=True)
    with launched(lambda data_dir: bench_env(data_dir, args.log_level), LOG) as system:
        assert system.log is not None
        system.start_ingest_worker()
        wait_idle(system.pid("api"), "the API")

        machine = MachineShare()
        report = Report()
        run_phases(args, system, report, system.log)
        report.notes.append(machine.describe())

        text = report.render(args, time.perf_counter() - started)
        publish("ingest", text)
        return 0


if __name__ == "__main__":
    sys.exit(main())
