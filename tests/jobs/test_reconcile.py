"""The reconciler against the live system: what it sends, re-queues, fails and leaves alone."""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta

import httpx
import pytest
import redis
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from protostar.auth import DEFAULT_TENANT, ensure_tenant
from protostar.constants import JobKind, TaskName
from protostar.db.models import Job
from protostar.jobs import reconcile as reconcile_module
from protostar.jobs import repo
from protostar.jobs.dispatch import Dispatcher
from protostar.jobs.reconcile import UNACKED, UNACKED_INDEX, in_broker, reconcile, unacked
from protostar.settings import Settings
from tests.api.test_jobs import wait_status
from tests.conftest import Live, wait_for


def make_job(engine: Engine, *, queue: str = "chat", dispatched: bool = True, **columns: object) -> uuid.UUID:
    """A probe row as the API would commit it (counted as sent, or ``dispatched=False``: committed, not sent),
    then aged or advanced with ``columns`` (SQL expressions)."""
    with Session(engine) as session, session.begin():
        tenant = ensure_tenant(session, DEFAULT_TENANT)
        job = repo.create(
            session,
            tenant_id=tenant,
            kind=JobKind.PROBE.value,
            task_name=TaskName.PROBE.value,
            queue=queue,
            payload={"steps": 1},
            dispatched=dispatched,
        )
        if columns:
            sets = ", ".join(f"{name} = {value}" for name, value in columns.items())
            session.execute(text(f"UPDATE jobs SET {sets} WHERE id = :id"), {"id": job.id})
        return job.id


def run(engine: Engine, client: redis.Redis, dispatcher: Dispatcher) -> dict[str, int]:
    with Session(engine) as session:
        return reconcile(session=session, client=client, dispatcher=dispatcher).as_dict()


def test_a_committed_but_unsent_job_is_sent(
    live: Live, engine: Engine, client: redis.Redis, dispatcher: Dispatcher, api: httpx.Client
) -> None:
    job_id = make_job(engine, dispatched=False, created_at="now() - interval '1 hour'")
    assert run(engine, client, dispatcher)["released"] >= 1
    job = wait_status(api, str(job_id), "succeeded")
    assert job["attempts"] == 1


def test_a_silent_running_job_is_requeued_then_runs(
    live: Live, engine: Engine, client: redis.Redis, dispatcher: Dispatcher, api: httpx.Client
) -> None:
    job_id = make_job(
        engine,
        status="'running'",
        attempts=1,
        worker="'gone:1'",
        started_at="now()",
        dispatched_at="now() - interval '1 hour'",
        heartbeat_at="now() - interval '1 hour'",
    )
    assert run(engine, client, dispatcher)["requeued_silent"] >= 1
    job = wait_status(api, str(job_id), "succeeded")
    assert job["attempts"] == 2


def test_a_silent_job_out_of_attempts_fails_with_a_reason(
    live: Live, engine: Engine, client: redis.Redis, dispatcher: Dispatcher, api: httpx.Client
) -> None:
    attempts = live.settings.max_attempts
    job_id = make_job(
        engine,
        status="'running'",
        attempts=attempts,
        worker="'gone:2'",
        started_at="now()",
        dispatched_at="now() - interval '1 hour'",
        heartbeat_at="now() - interval '1 hour'",
    )
    assert run(engine, client, dispatcher)["failed_silent"] >= 1
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert job["error"]["code"] == "worker_lost"
    assert "kept dying" in job["error"]["message"] and "gone:2" not in job["error"]["message"]  # no host names


def test_a_job_whose_message_was_lost_is_sent_again(
    live: Live, engine: Engine, client: redis.Redis, dispatcher: Dispatcher, api: httpx.Client
) -> None:
    job_id = make_job(engine, dispatched_at="now() - interval '1 hour'")  # "sent", but no message anywhere
    assert run(engine, client, dispatcher)["resent_lost"] >= 1
    wait_status(api, str(job_id), "succeeded")


def test_a_job_still_waiting_in_its_queue_is_left_alone(
    live: Live, engine: Engine, client: redis.Redis, dispatcher: Dispatcher
) -> None:
    queue = f"nobody-{uuid.uuid4().hex[:8]}"  # a queue no worker consumes: its message just waits
    job_id = make_job(engine, queue=queue, dispatched_at="now() - interval '1 hour'")
    message = {"headers": {"id": str(job_id), "task": TaskName.PROBE.value}, "body": ""}
    client.lpush(queue, json.dumps(message))
    try:
        assert in_broker(client, queue, {str(job_id)}) == {str(job_id)}
        report = run(engine, client, dispatcher)
        assert report["waiting"] >= 1
        assert client.llen(queue) == 1
        with Session(engine) as session:
            job = session.get(Job, job_id)
            assert job is not None and job.status == "queued"
    finally:
        client.delete(queue)
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM jobs WHERE id = :id"), {"id": job_id})


def test_a_job_past_its_expiry_fails_as_expired(
    live: Live, engine: Engine, client: redis.Redis, dispatcher: Dispatcher, api: httpx.Client, settings: Settings
) -> None:
    job_id = make_job(engine, created_at="now() - interval '30 days'", dispatched_at="now() - interval '30 days'")
    assert run(engine, client, dispatcher)["expired"] >= 1
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["error"]["code"] == "expired"


def test_beat_schedules_the_reconciler_every_few_seconds_with_an_expiry() -> None:
    import celeryconfig

    entry = celeryconfig.beat_schedule["reconcile-jobs"]
    assert entry["task"] == TaskName.RECONCILE.value
    interval = celeryconfig._settings.reconcile_interval
    assert entry["schedule"] == timedelta(seconds=interval)
    assert 0 < entry["options"]["expires"] < interval  # a send that waited that long is dropped, the next one runs
    assert entry["options"]["queue"] == "maintenance"


def park_in_unacked(client: redis.Redis, job_id: uuid.UUID, *, queue: str = "chat", age: float = 3600) -> str:
    """A delivery of the job's message as kombu records one: in ``unacked`` under a delivery tag, with its
    delivery time in ``unacked_index``; a worker that died holding it never acknowledges it."""
    tag = uuid.uuid4().hex
    message = {"headers": {"id": str(job_id), "task": TaskName.PROBE.value}, "body": "", "properties": {}}
    client.hset(UNACKED, tag, json.dumps([message, queue, queue]))
    client.zadd(UNACKED_INDEX, {tag: time.time() - age})
    return tag


def test_a_queued_job_whose_message_a_dead_worker_holds_is_sent_again(
    live: Live, engine: Engine, client: redis.Redis, dispatcher: Dispatcher, api: httpx.Client
) -> None:
    job_id = make_job(engine, dispatched_at="now() - interval '1 hour'")
    tag = park_in_unacked(client, job_id)
    assert in_broker(client, "chat", {str(job_id)}) == {str(job_id)}  # it looks "in the broker"...
    report = run(engine, client, dispatcher)
    assert report["resent_orphaned"] >= 1  # ...but no live worker holds it
    assert not client.hexists(UNACKED, tag) and client.zscore(UNACKED_INDEX, tag) is None
    job = wait_status(api, str(job_id), "succeeded")
    assert job["attempts"] == 1


def test_a_queued_job_whose_message_a_live_worker_holds_is_left_alone(
    live: Live,
    engine: Engine,
    client: redis.Redis,
    dispatcher: Dispatcher,
    api: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reconcile_module, "FRESH_DELIVERY", 0.0)  # ask the workers even about a fresh delivery
    job_id = make_job(engine)
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        dispatcher.celery.send_task(  # a retry's countdown: the chat worker holds it, unacknowledged, meanwhile
            job.task_name, kwargs={"job_id": str(job_id)}, task_id=str(job_id), queue="chat", countdown=20
        )
    wait_for(lambda: unacked(client, {str(job_id)}), timeout=10, what="the chat worker to take the message")
    with engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET dispatched_at = now() - interval '1 hour' WHERE id = :id"), {"id": job_id})
    report = run(engine, client, dispatcher)
    assert report["waiting"] >= 1 and report["resent_orphaned"] == 0
    assert len(unacked(client, {str(job_id)})[str(job_id)]) == 1  # still the one delivery, not a second one
    dispatcher.celery.control.revoke(str(job_id))
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM jobs WHERE id = :id"), {"id": job_id})
