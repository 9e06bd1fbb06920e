"""A summary that finds no turn at the LLM midway gives its thread back (``LLMBusy``), and its next delivery
makes only the calls left: the parts finished before are kept in Redis (``summary.parts``). The summary pipeline
runs in this process against the live PostgreSQL, Redis and the real local model."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from protostar.bundle import Clients
from protostar.constants import JobKind, TaskName
from protostar.errors import LLMBusy
from protostar.jobs import repo as jobs_repo
from protostar.jobs.broker import create_celery
from protostar.jobs.context import JobContext
from protostar.jobs.events import EventLog
from protostar.summary.parts import PREFIX, Parts
from protostar.summary.pipeline import summarize_session
from tests.api.test_auth import create_key
from tests.chat.test_chat_api import new_session
from tests.conftest import Live

AFTER = 2  # map calls done before the tenant's only LLM slot is taken
SENTENCE = "The harbour of Quillby keeps {n} boats painted blue, green and red for the lantern festival. "


@pytest.fixture
def clients(live: Live) -> Iterator[Clients]:
    built = Clients(settings=live.settings, celery=create_celery(live.settings), role="worker")
    yield built
    built.engine.dispose()
    built.redis.close()


@dataclass
class Long:
    session_id: uuid.UUID
    tenant_id: uuid.UUID
    job_id: uuid.UUID


@pytest.fixture
def long_session(live: Live, engine: Engine) -> Long:
    """A new tenant's session with four long questions and answers (a summary of several map calls and a reduce), and a
    summary job of it claimed by "this process" (running, attempt 1)."""
    with live.client(create_key(f"parts-{uuid.uuid4().hex[:8]}")) as api:
        session_id = uuid.UUID(new_session(api))
    with engine.begin() as conn:
        tenant_id = conn.execute(text("SELECT tenant_id FROM sessions WHERE id = :id"), {"id": session_id}).scalar_one()
        for n in range(4):
            question = uuid.uuid4()
            for role, message_id, reply_to in (("user", question, None), ("assistant", uuid.uuid4(), question)):
                conn.execute(
                    text(
                        "INSERT INTO messages (id, session_id, tenant_id, role, content, status, reply_to) "
                        "VALUES (:id, :sid, :tid, :role, :content, 'complete', :reply_to)"
                    ),
                    {
                        "id": message_id,
                        "sid": session_id,
                        "tid": tenant_id,
                        "role": role,
                        "content": SENTENCE.format(n=n) * 30,
                        "reply_to": reply_to,
                    },
                )
    with Session(engine) as session, session.begin():
        job = jobs_repo.create(
            session,
            tenant_id=tenant_id,
            kind=JobKind.SUMMARY_SESSION.value,
            task_name=TaskName.SUMMARY_SESSION.value,
            queue="summary",
            payload={"session_id": str(session_id)},
        )
        session.execute(text("UPDATE jobs SET status = 'running', attempts = 1 WHERE id = :id"), {"id": job.id})
        return Long(session_id, tenant_id, job.id)


@dataclass
class TurnTakenMidway(JobContext):
    """A job whose tenant's only LLM slot is taken by someone else (``take``) once ``AFTER`` map calls are done."""

    take: Callable[[], object] = lambda: None

    def progress(self, stage: str, done: int, total: int | None = None, *, persist: bool = True) -> None:
        if stage == "map" and done == AFTER and total != done:
            self.take()
        super().progress(stage, done, total, persist=persist)


def test_a_summary_sent_again_after_no_turn_makes_only_the_calls_left(
    clients: Clients, client: redis.Redis, long_session: Long
) -> None:
    limiter = clients.llm.limiter
    limiter.set_tenant_limits(long_session.tenant_id, concurrency=1, rpm=None)
    parts = Parts(client, job_id=long_session.job_id, ttl=600)
    common: dict[str, Any] = {
        "job_id": long_session.job_id,
        "tenant_id": long_session.tenant_id,
        "attempt": 1,
        "payload": {"session_id": str(long_session.session_id)},
        "engine": clients.engine,
        "events": EventLog(client, ttl=60, maxlen=100),
    }
    try:
        with ExitStack() as held:
            first = TurnTakenMidway(**common, take=lambda: held.enter_context(limiter.turn(long_session.tenant_id)))
            with pytest.raises(LLMBusy, match="calls in flight, this tenant"):
                summarize(first, clients, parts)
            assert client.hlen(f"{PREFIX}:{long_session.job_id}") == AFTER  # the finished calls are kept
        result = summarize(JobContext(**common), clients, parts)  # sent again: a turn is free now
    finally:
        limiter.set_tenant_limits(long_session.tenant_id, concurrency=None, rpm=None)
        with clients.engine.begin() as conn:
            conn.execute(
                text("UPDATE jobs SET status = 'succeeded', finished_at = now() WHERE id = :id"),
                {"id": long_session.job_id},
            )
    assert result["written"] is True
    assert result["llm_calls_reused"] == AFTER
    assert result["llm_calls"] > AFTER + 1  # more map calls, and a reduce
    assert client.exists(f"{PREFIX}:{long_session.job_id}") == 0  # forgotten once the summary is written


def summarize(ctx: JobContext, clients: Clients, parts: Parts) -> dict[str, Any]:
    return summarize_session(ctx, engine=clients.engine, llm=clients.llm, settings=clients.settings, parts=parts)
