"""All SQL for chunks: replace a document's chunks in bulk (COPY), delete them, and index a new embedding model.

``chunks.embedding`` has no fixed dimension so that models can coexist; each model has its own partial HNSW
index on ``(embedding::vector(dim)) vector_cosine_ops WHERE embedding_model = '<model>'`` (the migration makes
the default model's), and every search filters on the model, so vectors of two models are never compared.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import sql
from sqlalchemy import Connection, Engine, text

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
INDEX_PREFIX = "ix_chunks_hnsw_"
MAX_IDENTIFIER = 63  # PostgreSQL's NAMEDATALEN - 1
INDEX_LOCK_WAIT = 600.0  # seconds to wait for another process building the same index


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


def clean_text(value: str) -> str:
    """Text PostgreSQL accepts: no NUL (``text`` cannot hold one), no lone surrogates (not valid UTF-8)."""
    value = value.replace("\x00", "")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def vector_literal(vector: npt.NDArray[np.floating[Any]]) -> str:
    """pgvector's text form, ``[0.1,0.2,...]``; ``repr`` of the float32 values read back exactly."""
    return "[" + ",".join(map(repr, vector.tolist())) + "]"


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


# --- one HNSW index per embedding model ----------------------------------------------------------------


def index_name(model: str) -> str:
    """``ix_chunks_hnsw_<model as identifier>``, the migration's name for the default model; a long name is
    cut and suffixed with a hash of the model, so it stays unique within PostgreSQL's 63 characters."""
    slug = re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_") or "model"
    name = INDEX_PREFIX + slug
    if len(name) <= MAX_IDENTIFIER:
        return name
    return hashed_index_name(model, slug)


def hashed_index_name(model: str, slug: str | None = None) -> str:
    digest = hashlib.sha256(model.encode()).hexdigest()[:10]
    slug = slug if slug is not None else re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_")
    room = MAX_IDENTIFIER - len(INDEX_PREFIX) - len(digest) - 1
    return f"{INDEX_PREFIX}{slug[:room].rstrip('_')}_{digest}"


def ensure_vector_index(engine: Engine, *, model: str, dim: int) -> None:
    """Create the model's partial HNSW index unless a valid one exists (CONCURRENTLY: writes go on meanwhile).

    Safe to call from many processes at once: builds of the same index are serialised by an advisory lock
    (two concurrent ``CREATE INDEX CONCURRENTLY`` on one table can deadlock), and an invalid index left by a
    failed build is dropped and rebuilt.
    """
    if dim <= 0 or dim > 16000:
        raise ValueError(f"dimension {dim} is outside pgvector's range")
    # CONCURRENTLY refuses to run inside a transaction block: this connection autocommits (reset on checkin).
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as sa_conn:
        raw = sa_conn.connection.driver_connection
        if not isinstance(raw, psycopg.Connection):
            raise TypeError(f"index creation needs a psycopg 3 connection, not {type(raw).__name__}")
        try:
            with _advisory_lock(raw, f"chunks-hnsw:{model}"):
                _create_index(raw, model=model, dim=dim)
        finally:
            raw.execute("RESET statement_timeout")


def _create_index(raw: psycopg.Connection[Any], *, model: str, dim: int) -> None:
    literal = sql.Literal(model).as_string(raw)
    name = index_name(model)
    state = _index_state(raw, name)
    if state is not None and literal not in state[1]:  # another model's name after sanitising
        name = hashed_index_name(model)
        state = _index_state(raw, name)
    if state is not None and state[0]:
        return
    raw.execute("SET statement_timeout = 0")  # a build over many rows can take minutes
    if state is not None:  # a failed concurrent build leaves an invalid index behind
        logger.warning("index %s is invalid (a failed build); rebuilding it", name)
        raw.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(name)))
    started = time.monotonic()
    raw.execute(
        sql.SQL(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON chunks USING hnsw "
            "((embedding::vector({dim})) vector_cosine_ops) WHERE embedding_model = {model}"
        ).format(name=sql.Identifier(name), dim=sql.Literal(dim), model=sql.Literal(model))
    )
    logger.info("index %s for model %s (%d-d) built in %.1f s", name, model, dim, time.monotonic() - started)


def _index_state(raw: psycopg.Connection[Any], name: str) -> tuple[bool, str] | None:
    """(valid, definition) of the index on ``chunks`` with that name, or None."""
    row = raw.execute(
        "SELECT i.indisvalid, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = %s AND i.indrelid = 'chunks'::regclass",
        (name,),
    ).fetchone()
    return None if row is None else (bool(row[0]), str(row[1]))


@contextmanager
def _advisory_lock(raw: psycopg.Connection[Any], key: str) -> Iterator[None]:
    """A session advisory lock taken by polling: a blocked ``pg_advisory_lock`` would hold a snapshot that
    the other process's CONCURRENTLY build waits for, a deadlock."""
    deadline = time.monotonic() + INDEX_LOCK_WAIT
    while not _try_advisory_lock(raw, key):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {INDEX_LOCK_WAIT:.0f} s for another build of {key}")
        time.sleep(0.5)
    try:
        yield
    finally:
        raw.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))


def _try_advisory_lock(raw: psycopg.Connection[Any], key: str) -> bool:
    row = raw.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)).fetchone()
    return bool(row and row[0])
