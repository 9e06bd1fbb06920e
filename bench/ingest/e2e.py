"""Phase 1: PDF pages per second through the real API and ONE ingest child, next to bare ``unstructured``.

For each file, in turn: the baseline process parses it (``bench.ingest.bare_parse``), then it is uploaded and
its job is followed to the end, so both see the same machine. The worker is idle while the baseline parses.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.harness import JobRun, System
from bench.ingest import corpus
from bench.ingest.processes import BareParser

STAGES = ("download", "parse", "chunk", "embed", "store", "shell")


@dataclass(frozen=True)
class FileRun:
    name: str
    pages: int
    chunks: int
    bare: float  # seconds of partition_pdf in the baseline process
    run: JobRun

    @property
    def job(self) -> float:
        return self.run.finished - self.run.started

    @property
    def submit(self) -> float:
        return self.run.finished - self.run.submitted


def inputs(pages: int) -> list[tuple[str, bytes]]:
    files = [(p.name, p.read_bytes()) for p in corpus.page_pdfs()]
    return [*files, (f"generated-{pages}p.pdf", corpus.long_pdf(pages))]


def run(system: System, bare: BareParser, key: str, *, pages: int, rounds: int) -> list[FileRun]:
    """Every text PDF of the corpus and a generated ``pages``-page PDF, ``rounds`` times, each upload new bytes."""
    out: list[FileRun] = []
    files = inputs(pages)
    with tempfile.TemporaryDirectory(prefix="protostar-bench-pdf-") as tmp, system.client(key) as api:
        for round_ in range(rounds):
            for name, data in files:
                content = corpus.unique(data)
                path = Path(tmp) / f"{round_}-{name}"
                path.write_bytes(content)
                bare_seconds = bare.parse(path)
                answer, submitted = system.upload(api, name, content)
                job = system.wait(str(answer["job_id"]), submitted=submitted, api=api)
                if job.job["status"] != "succeeded":
                    raise RuntimeError(f"{name}: the ingest job ended {job.job['status']}: {job.job['error']}")
                result = job.job["result"]
                out.append(FileRun(name, int(result["pages"]), int(result["chunks"]), bare_seconds, job))
                print(
                    f"  {name}: {result['pages']} pages, {result['chunks']} chunks; job {out[-1].job:.2f} s, "
                    f"bare parse {bare_seconds:.2f} s",
                    flush=True,
                )
    return out


def stage_totals(runs: list[FileRun]) -> dict[str, float]:
    totals = dict.fromkeys(STAGES, 0.0)
    for r in runs:
        for stage, seconds in r.run.stage_seconds().items():
            totals[stage] += seconds
    return totals


def file_table(runs: list[FileRun]) -> list[str]:
    """One line per file: pages, chunks, bare parse, the job's stages, started→finished and submit→finished."""
    lines = [
        "| file | pages | chunks | bare parse (s) | " + " | ".join(STAGES) + " | job (s) | submit→finished (s) |",
        "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in STAGES) + " | ---: | ---: |",
    ]
    for r in runs:
        stages = r.run.stage_seconds()
        lines.append(
            f"| {r.name} | {r.pages} | {r.chunks} | {r.bare:.2f} | "
            + " | ".join(f"{stages[s]:.2f}" for s in STAGES)
            + f" | {r.job:.2f} | {r.submit:.2f} |"
        )
    return lines
