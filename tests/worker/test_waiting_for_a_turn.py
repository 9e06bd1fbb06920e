"""The job shell when a job finds no turn at the LLM (``LLMBusy``): the job goes back to ``queued`` with its
attempt given back and its message is sent again later; past ``PROTOSTAR_LLM_MAX_WAIT`` of waits it fails
``llm_busy``; a cancel ends it ``cancelled``, also one requested just before it went back to its queue. The real
shell runs in this process against the live PostgreSQL and Redis; the pipeline only raises."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from protostar.bundle import Clients
from protostar.constants import JobKind, TaskName
from protostar.errors import LLMBusy
from protostar.jobs import repo as jobs_repo
from protostar.jobs.broker import create_celery
from protostar.jobs.context import JobContext
from protostar.worker.shell import RETRIES_HEADER, WAITED_HEADER, run_job
from tests.conftest import Live
from tests.sse import read_events

REASON = "waiting for a turn at the LLM (limit: calls in flight, this tenant)"


class Sent(Exception):
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options


class FakeTask:
    """A delivery's task as the shell sees it: its request's headers, and ``retry`` (which sends nothing here)."""

    def __init__(self, headers: dict[str, Any] | None = None) -> None:
        self.request = SimpleNamespace(id="job", retries=0, headers=headers, timelimit=None)

    def retry(self, **options: Any) -> Sent:
        return Sent(options)


@pytest.fixture
def clients(live: Live) -> Iterator[Clients]:
    built = Clients(settings=live.settings, celery=create_celery(live.settings), role="worker")
    yield built
    built.engine.dispose()
    built.redis.close()


def queued_chat_job(engine: Engine, *, cancel_requested: bool = False) -> str:
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
        session.execute(
            text("UPDATE jobs SET cancel_requested = :c, dispatched_at = now() WHERE id = :id"),
            {"c": cancel_requested, "id": job.id},
        )
        return str(job.id)


def no_turn(ctx: JobContext) -> dict[str, Any]:
    raise LLMBusy(REASON, retry_in=3.0, limit="calls in flight, this tenant")


def test_a_job_with_no_turn_goes_back_to_its_queue_and_is_sent_again(
    api: httpx.Client, engine: Engine, clients: Clients
) -> None:
    job_id = queued_chat_job(engine)
    with pytest.raises(Sent) as sent:
        run_job(FakeTask(), clients, job_id, no_turn)  # type: ignore[arg-type]
    options = sent.value.options
    assert options["countdown"] >= 3.0
    assert options["headers"][RETRIES_HEADER] == {"throttled": 1}
    assert options["headers"][WAITED_HEADER] == options["countdown"]
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "queued" and job["attempts"] == 0 and job["progress"]["stage"] == "waiting_for_llm"
    statuses = [e.data for e in read_events(api, job_id, stop_after=2)]
    assert statuses[0]["status"] == "running"
    assert statuses[1] == {"status": "queued", "retry_in": round(options["countdown"], 1), "reason": REASON}
    api.post(f"/v1/jobs/{job_id}/cancel")


def test_past_the_longest_wait_the_job_fails_llm_busy(api: httpx.Client, engine: Engine, clients: Clients) -> None:
    job_id = queued_chat_job(engine)
    waited = {RETRIES_HEADER: {"throttled": 40}, WAITED_HEADER: clients.settings.llm_max_wait}
    with pytest.raises(LLMBusy):
        run_job(FakeTask(waited), clients, job_id, no_turn)  # type: ignore[arg-type]
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["error"]["code"] == "llm_busy"
    assert "no turn at the LLM within" in job["error"]["message"] and "calls in flight" in job["error"]["message"]


def test_a_cancel_while_asking_for_a_turn_ends_cancelled(api: httpx.Client, engine: Engine, clients: Clients) -> None:
    job_id = queued_chat_job(engine)

    def cancelled_then_no_turn(ctx: JobContext) -> dict[str, Any]:
        ctx.cancel()
        return no_turn(ctx)

    assert run_job(FakeTask(), clients, job_id, cancelled_then_no_turn) is None  # type: ignore[arg-type]
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"


def test_a_queued_job_with_a_pending_cancel_ends_cancelled_at_its_next_delivery(
    api: httpx.Client, engine: Engine, clients: Clients
) -> None:
    # As a release leaves a job whose cancel was requested just before it went back to its queue.
    job_id = queued_chat_job(engine, cancel_requested=True)
    ran: list[str] = []
    assert run_job(FakeTask(), clients, job_id, lambda ctx: ran.append("ran") or {}) is None  # type: ignore[arg-type]
    assert ran == []
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["attempts"] == 0
    assert [e.event for e in read_events(api, job_id)][-2:] == ["status", "done"]
