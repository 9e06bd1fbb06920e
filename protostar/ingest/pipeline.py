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
from protostar.errors import InputRejected, TimeLimitExceeded
from protostar.ingest import parts, shard, store
from protostar.ingest.chunk import Chunk, chunk
from protostar.ingest.ocr import OcrLimits
from protostar.ingest.parse import parse
from protostar.jobs.context import JobContext
from protostar.settings import Settings
from protostar.storage import Bucket

logger = logging.getLogger(__name__)


def ingest(
    ctx: JobContext,
    *,
    engine: Engine,
    bucket: Bucket,
    embedder: Embedder,
    settings: Settings,
    fan_out: shard.FanOut | None = None,
) -> dict[str, Any]:
    """Ingest the job's document. A PDF over ``ingest_shard_pages`` pages is parsed and embedded in parts by all
    ingest children (:mod:`protostar.ingest.shard`, helpers sent through ``fan_out``); any other document over
    ``ingest_shard_chunks`` chunks is parsed here and embedded in parts; the rest, or all with no ``fan_out``,
    in this delivery alone."""
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
        pages = shard.pages_to_shard(path, ctx.payload["kind"], settings) if fan_out is not None else None
        sharded = pages is not None
        if pages is not None and fan_out is not None:
            logger.info("document_id=%s job_id=%s sharded: %d pages", document_id, ctx.job_id, pages)
            try:
                chunks, vectors = shard.run(
                    ctx,
                    path=path,
                    page_count=pages,
                    fan_out=fan_out,
                    engine=engine,
                    embedder=embedder,
                    settings=settings,
                )
            except (InputRejected, TimeLimitExceeded):  # the job fails: its parts are of no more use. A cancelled
                _forget_parts(engine, ctx.job_id)  # job's stay (another delivery may own it now): reconcile sweeps them
                raise
            page_count: int | None = pages
            ocr: dict[str, Any] | None = None  # the parts' OCR notes are not gathered (yet)
        else:
            chunks, page_count, ocr = _parsed(ctx, path, settings=settings)
            if fan_out is not None and len(chunks) > settings.ingest_shard_chunks:
                logger.info("document_id=%s job_id=%s sharded: %d chunks", document_id, ctx.job_id, len(chunks))
                sharded = True
                try:
                    vectors = shard.embed(
                        ctx, chunks, fan_out=fan_out, engine=engine, embedder=embedder, settings=settings
                    )
                except (InputRejected, TimeLimitExceeded):
                    _forget_parts(engine, ctx.job_id)
                    raise
            else:
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
        documents.mark_ingested(
            conn, document_id=document_id, chunk_count=count, page_count=page_count, model=embedder.model
        )
        if sharded:
            parts.delete(conn, job_id=ctx.job_id)
    ctx.progress("store", 1, 1)
    logger.info("document_id=%s job_id=%s ingested chunks=%d pages=%s", document_id, ctx.job_id, count, page_count)
    return {
        "document_id": str(document_id),
        "chunks": count,
        "pages": page_count,
        "embedding_model": embedder.model,
        "embedding_tokens": sum(c.token_count for c in chunks),  # what was embedded, in the model's tokens
        **({"ocr": ocr} if ocr is not None else {}),
    }


def _parsed(
    ctx: JobContext, path: Path, *, settings: Settings
) -> tuple[list[Chunk], int | None, dict[str, Any] | None]:
    """Parse (OCR included) and chunk in this delivery alone (every document but large PDFs); the OCR note."""
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
    return chunks, parsed.page_count, parsed.ocr


def _forget_parts(engine: Engine, job_id: uuid.UUID) -> None:
    try:
        with engine.begin() as conn:
            parts.delete(conn, job_id=job_id)
    except Exception as exc:  # noqa: BLE001 (best effort: the rows go with the job's row, or the next success)
        logger.warning("job_id=%s parts not deleted: %r", job_id, exc)


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
