"""The chat pipeline's retrieval on the real database: no query embedding for a tenant without chunks, a cancel
seen between the steps, and a cancel that cancels the running statement."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import pytest
from sqlalchemy import Engine, text

from protostar.chat import pipeline
from protostar.constants import EventType
from protostar.embeddings.embed import LOCAL_DIM, Vectors
from protostar.embeddings.export import ONNX_INT8_MODEL
from protostar.errors import Cancelled
from protostar.jobs.context import JobContext
from protostar.jobs.events import EventLog
from protostar.search import Scope


class _Events:
    def __init__(self) -> None:
        self.published: list[tuple[EventType, dict[str, Any]]] = []

    def publish_many(self, job_id: object, events: list[tuple[EventType, dict[str, Any]]]) -> list[str]:
        self.published += events
        return [f"{i}-0" for i in range(len(events))]


class _CountingEmbedder:
    model = ONNX_INT8_MODEL
    dim = LOCAL_DIM

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> Vectors:
        self.calls += 1
        return np.ones((len(texts), self.dim), dtype=np.float32) / np.sqrt(self.dim)


def context(engine: Engine, tenant_id: uuid.UUID | None = None) -> JobContext:
    return JobContext(
        job_id=uuid.uuid4(),
        tenant_id=tenant_id or uuid.uuid4(),
        attempt=1,
        payload={},
        engine=engine,
        events=cast(EventLog, _Events()),
    )


def test_a_tenant_without_chunks_gets_no_sources_and_its_question_is_not_embedded(engine: Engine) -> None:
    ctx = context(engine)
    embedder = _CountingEmbedder()
    searching: list[bool] = []
    hits = pipeline.retrieve(
        ctx, engine, embedder, query="anything?", top_k=5, scope=Scope(), searching=lambda: searching.append(True)
    )
    assert hits == []
    assert embedder.calls == 0
    # Nothing was searched: the caller sends the ``retrieve`` 0 event with its next ones.
    assert searching == [] and cast(_Events, ctx.events).published == []


def test_a_scope_without_chunks_is_not_embedded_either(engine: Engine) -> None:
    embedder = _CountingEmbedder()
    scope = Scope(collection_ids=(uuid.uuid4(),))
    hits = pipeline.retrieve(context(engine), engine, embedder, query="anything?", top_k=5, scope=scope)
    assert hits == [] and embedder.calls == 0


def test_a_cancel_cancels_the_running_statement_and_ends_as_the_jobs_stop(engine: Engine) -> None:
    ctx = context(engine)
    threading.Timer(0.3, ctx.cancel).start()
    started = time.monotonic()
    with pytest.raises(Cancelled), engine.connect() as conn, pipeline._cancels_statement(ctx, conn):
        conn.execute(text("SELECT pg_sleep(30)"))
    assert time.monotonic() - started < 20  # the statement would have run 30 s
    with engine.connect() as conn:  # the pool's connections are fine afterwards
        assert conn.execute(text("SELECT 1")).scalar() == 1


def test_no_cancel_reaches_a_statement_after_the_block(engine: Engine) -> None:
    ctx = context(engine)
    with engine.connect() as conn:
        with pipeline._cancels_statement(ctx, conn):
            conn.execute(text("SELECT 1"))
        ctx.cancel()  # the hook is gone: the next statement on this connection runs to its end
        assert conn.execute(text("SELECT pg_sleep(0.2), 2")).one()[1] == 2
