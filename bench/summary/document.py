"""Phase 2: a whole document summarized by map-reduce over its chunks, through the API and a job, against the
same fold over the same chunks with llama-server called directly."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench.harness import JobRun, System
from bench.llm import Direct
from bench.summary.session import FoldRun, run_fold


@dataclass
class DocumentRun:
    name: str
    chunks: int
    tokens_before: int
    job: JobRun
    direct: FoldRun


def summarize(system: System, key: str, tenant_id: uuid.UUID, path: Path, direct: Direct) -> DocumentRun:
    from protostar.summary import fold
    from protostar.summary.repo import chunk_texts

    with system.client(key) as api:
        uploaded, sent = system.upload(api, path.name, path.read_bytes())
        ingest = system.wait(uploaded["job_id"], submitted=sent, api=api)
        if ingest.job["status"] != "succeeded":
            raise RuntimeError(f"ingesting {path.name} ended {ingest.job['status']}: {ingest.job.get('error')}")
        document_id = uploaded["document_id"]
        sent = time.time()
        accepted = api.post(f"/v1/documents/{document_id}/summarize")
        accepted.raise_for_status()
        run = system.wait(accepted.json()["job_id"], submitted=sent, api=api, timeout=1800)
        if run.job["status"] != "succeeded":
            raise RuntimeError(f"the summary of {path.name} ended {run.job['status']}: {run.job.get('error')}")
    with system.engine.connect() as conn:
        chunks = chunk_texts(conn, document_id=uuid.UUID(document_id), tenant_id=tenant_id)
    again = run_fold(direct, system.settings, [t for t, _ in chunks], fold.DOCUMENT)
    return DocumentRun(path.name, len(chunks), sum(n for _, n in chunks), run, again)
