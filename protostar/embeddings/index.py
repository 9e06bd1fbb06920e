"""One HNSW index per embedding model on ``chunks``.

``chunks.embedding`` has no fixed dimension so that models can coexist; each model has its own partial HNSW
index on ``(embedding::vector(dim)) vector_cosine_ops WHERE embedding_model = '<model>'``, and every search
filters on the model, so vectors of two models are never compared. :func:`ensure_vector_index` makes the
configured model's index before anything serves searches or stores vectors (``protostar migrate``, the API's
and each worker's start-up), so a switch of model never leaves search without an index.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine

from protostar.db.engine import make_engine
from protostar.settings import Settings

logger = logging.getLogger(__name__)

INDEX_PREFIX = "ix_chunks_hnsw_"
MAX_IDENTIFIER = 63  # PostgreSQL's NAMEDATALEN - 1
INDEX_LOCK_WAIT = 600.0  # seconds to wait for another process building the same index


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


def ensure_configured_index(settings: Settings) -> None:
    """The configured embedding model's index, made now if missing: called by ``protostar migrate`` and when
    the API and each worker start, before anything searches or stores vectors of that model."""
    engine = make_engine(settings, pool_size=1, max_overflow=0)
    try:
        ensure_vector_index(engine, model=settings.embedding_model, dim=settings.embedding_dim)
    finally:
        engine.dispose()
