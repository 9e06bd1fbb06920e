"""Ingestion of one document: download → parse → chunk → embed → store, reporting progress per stage.

Plain, synchronous, Celery-free: the task shell calls :func:`ingest` with the job's context and the clients it
uses. Re-running it for the same document (a redelivery) replaces the document's chunks in one transaction, so
exactly one set remains, and only the delivery that still owns the job may write (``JobContext.owned``). The
document's status needs no write: it is its ingest job's.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine

from protostar.documents import repo as documents
from protostar.embeddings.embed import Embedder
from protostar.errors import InputRejected
from protostar.ingest import store
from protostar.ingest.chunk import Chunk, chunk
from protostar.ingest.ocr import OcrLimits
from protostar.ingest.parse import parse
from protostar.jobs.context import JobContext
from protostar.settings import Settings
from protostar.storage import Bucket

logger = logging.getLogger(__name__)


def ingest(
    ctx: JobContext, *, engine: Engine, bucket: Bucket, embedder: Embedder, settings: Settings
) -> dict[str, Any]:
    document_id = uuid.UUID(ctx.payload["document_id"])
    document = documents.load(engine, document_id=document_id)
    if document is None:
        raise InputRejected("the document was deleted before it was ingested")

    with tempfile.TemporaryDirectory(prefix="protostar-ingest-") as tmp:
        ctx.progress("download", 0, 1)
        path = Path(tmp) / "source"
        bucket.download(document.object_key, str(path))
        ctx.progress("download", 1, 1)
        ctx.check_cancelled()
        ctx.progress("parse", 0, 1)
        parsed = parse(
            path,
            ctx.payload["kind"],
            max_pages=settings.max_pages,
            ocr=OcrLimits.from_settings(settings),
            between_pages=ctx.check_cancelled,
        )
        ctx.progress("parse", 1, 1)
    ctx.check_cancelled()

    chunks = chunk(parsed.elements, max_tokens=settings.chunk_tokens, overlap=settings.chunk_overlap)
    if not chunks:
        raise InputRejected("the document has no text to index")
    ctx.progress("chunk", len(chunks), len(chunks))
    vectors = embed_chunks(ctx, chunks, embedder=embedder, batch=settings.embedding_batch_size)
    ctx.progress("store", 0, 1)
    with ctx.owned() as conn:
        if not documents.lock_for_write(conn, document_id=document_id):
            raise InputRejected("the document was deleted while it was being ingested")
        count = store.replace_chunks(
            conn,
            document_id=document_id,
            tenant_id=document.tenant_id,
            chunks=chunks,
            vectors=vectors,
            model=embedder.model,
        )
        documents.mark_ingested(conn, document_id=document_id, chunk_count=count, page_count=parsed.page_count)
    ctx.progress("store", 1, 1)
    logger.info(
        "document_id=%s job_id=%s ingested chunks=%d pages=%s", document_id, ctx.job_id, count, parsed.page_count
    )
    return {
        "document_id": str(document_id),
        "chunks": count,
        "pages": parsed.page_count,
        "embedding_model": embedder.model,
        **({"ocr": parsed.ocr} if parsed.ocr is not None else {}),
    }


def embed_chunks(ctx: JobContext, chunks: list[Chunk], *, embedder: Embedder, batch: int) -> np.ndarray:
    """Vectors in the chunks' order. Batches are cut from the chunks sorted by length, so a batch pads its
    texts to a similar length: the model computes about a third fewer padding tokens than in document order."""
    order = sorted(range(len(chunks)), key=lambda i: chunks[i].token_count)
    vectors = np.zeros((len(chunks), embedder.dim), dtype=np.float32)
    for start in range(0, len(order), batch):
        ctx.check_cancelled()
        part = order[start : start + batch]
        vectors[part] = embedder.embed([chunks[i].text for i in part])
        ctx.progress("embed", min(start + batch, len(chunks)), len(chunks))
    return vectors
