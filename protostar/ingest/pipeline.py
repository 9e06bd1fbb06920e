"""Ingestion of one document: download → parse → chunk → embed → store, reporting progress per stage.

Plain, synchronous, Celery-free: the task shell calls :func:`ingest` with a :class:`JobContext`. Re-running it
for the same document (a redelivery) replaces the document's chunks in one transaction, so exactly one set
remains, and only the delivery that still owns the job may write.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

from protostar.constants import JobStatus
from protostar.db.models import Document
from protostar.documents.repo import DocumentStatus, set_status
from protostar.errors import Cancelled, InputRejected
from protostar.ingest import store
from protostar.ingest.chunk import Chunk, chunk
from protostar.ingest.parse import parse
from protostar.jobs import repo as jobs_repo
from protostar.worker.shell import JobContext

logger = logging.getLogger(__name__)


def ingest(ctx: JobContext) -> dict[str, Any]:
    res, settings = ctx.resources, ctx.resources.settings
    document_id = uuid.UUID(ctx.payload["document_id"])
    document = _load(ctx, document_id)
    set_status(res.engine, document_id=document_id, status=DocumentStatus.PROCESSING)

    with tempfile.TemporaryDirectory(prefix="protostar-ingest-") as tmp:
        ctx.progress("download", 0, 1)
        path = Path(tmp) / "source"
        res.minio.fget_object(settings.s3_bucket, document.object_key, str(path))
        ctx.progress("download", 1, 1)
        ctx.check_cancelled()
        ctx.progress("parse", 0, 1)
        parsed = parse(path, ctx.payload["kind"], max_pages=settings.max_pages)
        ctx.progress("parse", 1, 1)
    ctx.check_cancelled()

    chunks = chunk(parsed.elements, max_tokens=settings.chunk_tokens, overlap=settings.chunk_overlap)
    if not chunks:
        raise InputRejected("the document has no text to index")
    ctx.progress("chunk", len(chunks), len(chunks))
    vectors = _embed(ctx, chunks)
    ctx.progress("store", 0, 1)
    with res.engine.begin() as conn:
        _still_ours(conn, ctx, document_id)
        count = store.replace_chunks(
            conn,
            document_id=document_id,
            tenant_id=document.tenant_id,
            chunks=chunks,
            vectors=vectors,
            model=res.embedder.model,
        )
        conn.execute(
            text(
                "UPDATE documents SET status = :status, chunk_count = :n, page_count = :pages, error = NULL, "
                "updated_at = now() WHERE id = :id"
            ),
            {"status": DocumentStatus.READY, "n": count, "pages": parsed.page_count, "id": document_id},
        )
    ctx.progress("store", 1, 1)
    logger.info(
        "document_id=%s job_id=%s ingested chunks=%d pages=%s", document_id, ctx.job_id, count, parsed.page_count
    )
    return {
        "document_id": str(document_id),
        "chunks": count,
        "pages": parsed.page_count,
        "embedding_model": res.embedder.model,
    }


def _load(ctx: JobContext, document_id: uuid.UUID) -> Document:
    with Session(ctx.resources.engine, expire_on_commit=False) as session:
        document = session.get(Document, document_id)
    if document is None:
        raise InputRejected("the document was deleted before it was ingested")
    return document


def _embed(ctx: JobContext, chunks: list[Chunk]) -> np.ndarray:
    """Vectors in the chunks' order. Batches are cut from the chunks sorted by length, so a batch pads its
    texts to a similar length: the model computes about a third fewer padding tokens than in document order."""
    embedder, batch = ctx.resources.embedder, ctx.resources.settings.embedding_batch_size
    order = sorted(range(len(chunks)), key=lambda i: chunks[i].token_count)
    vectors = np.zeros((len(chunks), embedder.dim), dtype=np.float32)
    for start in range(0, len(order), batch):
        ctx.check_cancelled()
        part = order[start : start + batch]
        vectors[part] = embedder.embed([chunks[i].text for i in part])
        ctx.progress("embed", min(start + batch, len(chunks)), len(chunks))
    return vectors


def _still_ours(conn: Connection, ctx: JobContext, document_id: uuid.UUID) -> None:
    """Lock the job and the document for the write; refuse when either moved on meanwhile."""
    if not jobs_repo.lock_owned(conn, job_id=ctx.job_id, attempt=ctx.attempt):
        raise Cancelled("another delivery owns this job now")
    if conn.execute(text("SELECT 1 FROM documents WHERE id = :id FOR UPDATE"), {"id": document_id}).first() is None:
        raise InputRejected("the document was deleted while it was being ingested")


def mark_failed(ctx: JobContext, status: JobStatus, code: str, message: str) -> None:
    """The job ended without success: say why on the document too."""
    document_id = uuid.UUID(ctx.payload["document_id"])
    reason = "ingestion was cancelled" if status == JobStatus.CANCELLED else message
    set_status(ctx.resources.engine, document_id=document_id, status=DocumentStatus.FAILED, error=reason)
