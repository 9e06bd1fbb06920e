"""A job whose cancel was requested while it ran, and which then went back to its queue (to wait for an LLM
turn, or after a transient failure), ends ``cancelled`` at its next delivery instead of staying queued."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from protostar.bundle import Clients
from protostar.constants import JobKind, TaskName
from protostar.jobs import repo as jobs_repo
from protostar.jobs.broker import create_celery
from protostar.worker.shell import run_job
from protostar.worker.tasks.chat import chat_task
from tests.conftest import Live
from tests.sse import read_events


@pytest.fixture
def clients(live: Live) -> Iterator[Clients]:
    built = Clients(settings=live.settings, celery=create_celery(live.settings), role="worker")
    yield built
    built.engine.dispose()
    built.redis.close()


def test_a_queued_job_with_a_pending_cancel_ends_cancelled_at_its_next_delivery(
    api: httpx.Client, engine: Engine, clients: Clients
) -> None:
    with engine.connect() as conn:
        tenant_id = conn.execute(text("SELECT id FROM tenants WHERE name = 'default'")).scalar_one()
    with Session(engine) as session, session.begin():
        job = jobs_repo.create(
            session,
            tenant_id=tenant_id,
            kind=JobKind.CHAT.value,
            task_name=TaskName.CHAT.value,
            queue="chat",
            payload={"session_id": str(uuid.uuid4()), "message_id": str(uuid.uuid4())},
        )
        # As a release leaves it when the cancel flag was set just before: queued, one attempt given back.
        session.execute(text("UPDATE jobs SET cancel_requested = true WHERE id = :id"), {"id": job.id})
        job_id = str(job.id)

    ran: list[str] = []
    assert run_job(chat_task, clients, job_id, lambda ctx: ran.append("ran") or {}) is None

    assert ran == []
    job_view = api.get(f"/v1/jobs/{job_id}").json()
    assert job_view["status"] == "cancelled" and job_view["attempts"] == 0
    assert [e.event for e in read_events(api, job_id)][-2:] == ["status", "done"]
