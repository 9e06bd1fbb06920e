"""Asking in a session is one statement (``chat.submit.ask``, ``chat.repo.asking``): the user's message and its
answer's job are written together, or neither is: another tenant's session, a tenant past its quota. The job's
payload takes the session's collections unless the caller named its own; the session's ``updated_at`` moves.

A stub stands in for Celery (``tests.submits.Broker``), so no worker runs these jobs."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, text

from protostar.chat.submit import ask
from protostar.errors import NotFound, TooManyRequests
from protostar.jobs.dispatch import Dispatcher
from protostar.jobs.events import EventLog
from tests.conftest import Live
from tests.submits import Broker, Stubbed, new_tenant

CAP, QUOTA = 2, 4


def dispatcher_of(live: Live, engine: Engine, client: redis.Redis) -> Dispatcher:
    settings = live.settings.model_copy(update={"tenant_inflight_chat": CAP, "tenant_max_queued": QUOTA})
    events = EventLog(client, ttl=settings.events_ttl, maxlen=settings.events_maxlen)
    return Stubbed(celery=Broker(), engine=engine, events=events, settings=settings)  # type: ignore[arg-type]


def new_session(engine: Engine, tenant: uuid.UUID, collections: list[uuid.UUID]) -> uuid.UUID:
    """A session of ``tenant`` bound to ``collections`` (ids only: the binding is not a foreign key), last
    updated an hour ago."""
    with engine.begin() as conn:
        made = conn.execute(
            text(
                "INSERT INTO sessions (id, tenant_id, collection_ids, updated_at) "
                "VALUES (gen_random_uuid(), :t, :c, now() - interval '1 hour') RETURNING id"
            ),
            {"t": tenant, "c": collections},
        ).scalar_one()
    return uuid.UUID(str(made))


def written(engine: Engine, session_id: uuid.UUID) -> dict[str, Any]:
    with engine.connect() as conn:
        messages = conn.execute(
            text("SELECT id, content, job_id, role, status FROM messages WHERE session_id = :s ORDER BY seq"),
            {"s": session_id},
        ).all()
        jobs = conn.execute(
            text("SELECT id, payload, stage FROM jobs WHERE payload->>'session_id' = :s ORDER BY created_at"),
            {"s": str(session_id)},
        ).all()
        fresh = conn.execute(
            text("SELECT updated_at > now() - interval '1 minute' FROM sessions WHERE id = :s"), {"s": session_id}
        ).scalar()
    return {"messages": messages, "jobs": jobs, "touched": fresh}


def test_the_message_and_its_job_are_written_together(live: Live, pool: Engine, client: redis.Redis) -> None:
    dispatcher = dispatcher_of(live, pool, client)
    tenant = new_tenant(pool)
    bound = [uuid.uuid4(), uuid.uuid4()]
    session_id = new_session(pool, tenant, bound)
    content = '50% o\'clock \\ "quoted" {braces} %s $$ ; COMMIT; --'

    asked = ask(dispatcher, tenant_id=tenant, session_id=session_id, content=content, filter={"team": "ports"})

    got = written(pool, session_id)
    [(message_id, stored, job_id, role, status)] = got["messages"]
    [(job, payload, stage)] = got["jobs"]
    assert (message_id, job_id, job) == (asked.message_id, asked.job_id, asked.job_id)
    assert (stored, role, status, stage) == (content, "user", "complete", None)
    assert payload == {
        "session_id": str(session_id),
        "message_id": str(asked.message_id),
        "collection_ids": [str(c) for c in bound],  # the session's, in its order
        "filter": {"team": "ports"},
    }
    assert got["touched"]


def test_collections_named_by_the_caller_replace_the_sessions(live: Live, pool: Engine, client: redis.Redis) -> None:
    dispatcher = dispatcher_of(live, pool, client)
    tenant = new_tenant(pool)
    session_id = new_session(pool, tenant, [uuid.uuid4()])
    mine = uuid.uuid4()
    ask(dispatcher, tenant_id=tenant, session_id=session_id, content="named", collection_ids=[mine])
    ask(dispatcher, tenant_id=tenant, session_id=session_id, content="all", collection_ids=[])
    payloads = [row[1] for row in written(pool, session_id)["jobs"]]
    assert [p.get("collection_ids") for p in payloads] == [[str(mine)], None]


def test_another_tenants_session_writes_nothing(live: Live, pool: Engine, client: redis.Redis) -> None:
    dispatcher = dispatcher_of(live, pool, client)
    owner, stranger = new_tenant(pool), new_tenant(pool)
    session_id = new_session(pool, owner, [])
    with pytest.raises(NotFound, match=f"session {session_id} not found"):
        ask(dispatcher, tenant_id=stranger, session_id=session_id, content="not mine")
    with pytest.raises(NotFound):
        ask(dispatcher, tenant_id=owner, session_id=uuid.uuid4(), content="no such session")
    got = written(pool, session_id)
    assert got["messages"] == [] and got["jobs"] == [] and not got["touched"]


def test_past_the_cap_it_waits_and_past_the_quota_nothing_is_written(
    live: Live,
    pool: Engine,
    client: redis.Redis,
) -> None:
    dispatcher = dispatcher_of(live, pool, client)
    tenant = new_tenant(pool)
    session_id = new_session(pool, tenant, [])
    for i in range(QUOTA):
        ask(dispatcher, tenant_id=tenant, session_id=session_id, content=f"question {i}")
    with pytest.raises(TooManyRequests):
        ask(dispatcher, tenant_id=tenant, session_id=session_id, content="one too many")
    got = written(pool, session_id)
    assert [m[1] for m in got["messages"]] == [f"question {i}" for i in range(QUOTA)]
    assert [j[2] for j in got["jobs"]] == [None] * CAP + ["waiting_turn"] * (QUOTA - CAP)
