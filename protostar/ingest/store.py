"""All SQL for chunks: replace a document's chunks in bulk (COPY), and delete them (indexes: ``embeddings.index``).

``chunks.embedding`` has no fixed dimension so that models can coexist; each model has its own partial HNSW
index on ``(embedding::vector(dim)) vector_cosine_ops WHERE embedding_model = '<model>'`` (the migration makes
the default model's), and every search filters on the model, so vectors of two models are never compared.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import sql
from sqlalchemy import Connection, text

from protostar.db.values import clean_text, vector_literal
from protostar.errors import InputRejected, NotFound

logger = logging.getLogger(__name__)

COPY_COLUMNS = (
    "document_id",
    "tenant_id",
    "ordinal",
    "text",
    "page",
    "element_types",
    "token_count",
    "embedding_model",
    "embedding",
)


class ChunkLike(Protocol):
    """What the store needs of a chunk (read-only, so frozen dataclasses fit)."""

    @property
    def ordinal(self) -> int: ...
    @property
    def text(self) -> str: ...
    @property
    def page(self) -> int | None: ...
    @property
    def element_types(self) -> list[str]: ...
    @property
    def token_count(self) -> int: ...


def replace_chunks(
    conn: Connection,
    *,
    document_id: uuid.UUID,
    tenant_id: uuid.UUID,
    chunks: Sequence[ChunkLike],
    vectors: npt.NDArray[np.floating[Any]],
    model: str,
) -> int:
    """Replace the document's chunks with ``chunks`` in the caller's transaction; returns how many were written.

    The document row is locked first, so two deliveries of the same ingestion serialise and exactly one set of
    chunks remains whichever commits last. Rows go in with one COPY, never one INSERT per row.
    """
    matrix = _checked_vectors(vectors, len(chunks))
    _lock_document(conn, document_id=document_id, tenant_id=tenant_id)
    deleted = delete_document_chunks(conn, document_id=document_id)
    raw = conn.connection.driver_connection
    if not isinstance(raw, psycopg.Connection):
        raise TypeError(f"COPY needs a psycopg 3 connection, not {type(raw).__name__}")
    started = time.monotonic()
    with raw.cursor() as cursor, cursor.copy(_copy_statement()) as copy:
        for chunk, vector in zip(chunks, matrix, strict=True):
            copy.write_row(
                (
                    document_id,
                    tenant_id,
                    chunk.ordinal,
                    clean_text(chunk.text),
                    chunk.page,
                    [clean_text(t) for t in chunk.element_types],
                    chunk.token_count,
                    model,
                    vector_literal(vector),
                )
            )
    logger.info(
        "document_id=%s tenant_id=%s chunks replaced: %d deleted, %d copied (model=%s) in %.3f s",
        document_id,
        tenant_id,
        deleted,
        len(chunks),
        model,
        time.monotonic() - started,
    )
    return len(chunks)


def delete_document_chunks(conn: Connection, *, document_id: uuid.UUID) -> int:
    """Delete every chunk of the document in the caller's transaction; returns how many there were."""
    result = conn.execute(text("DELETE FROM chunks WHERE document_id = :id"), {"id": document_id})
    return int(result.rowcount)


def _checked_vectors(vectors: npt.NDArray[np.floating[Any]], count: int) -> npt.NDArray[np.float32]:
    matrix = np.asarray(vectors, dtype=np.float32)
    if count == 0 and matrix.size == 0:
        return matrix.reshape(0, 0)
    if matrix.ndim != 2 or matrix.shape[0] != count or matrix.shape[1] == 0:
        raise ValueError(f"vectors must have shape ({count}, dim), not {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise InputRejected("an embedding contains NaN or infinity")
    return matrix


def _lock_document(conn: Connection, *, document_id: uuid.UUID, tenant_id: uuid.UUID) -> None:
    owner = conn.execute(
        text("SELECT tenant_id FROM documents WHERE id = :id FOR NO KEY UPDATE"), {"id": document_id}
    ).scalar()
    if owner is None:
        raise NotFound(f"document {document_id} does not exist")
    if owner != tenant_id:
        raise ValueError(f"document {document_id} belongs to another tenant")


def _copy_statement() -> sql.Composed:
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in COPY_COLUMNS)
    return sql.SQL("COPY chunks ({}) FROM STDIN").format(columns)
