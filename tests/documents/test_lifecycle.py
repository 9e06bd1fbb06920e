"""A document's status is its latest ingest job's, however that job ends: cancelled while queued, expired,
its worker lost, failed in the worker. Each leaves the document ``failed`` with the job's reason, and the same
upload then queues it again (live stack; the stuck states are made by hand in the jobs table)."""

from __future__ import annotations

import uuid

import httpx
import pytest
import redis
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from protostar.constants import JobKind, TaskName
from protostar.jobs import repo
from protostar.jobs.dispatch import Dispatcher
from tests.api.test_jobs import wait_status
from tests.ingest.test_documents_api import upload
from tests.jobs.test_reconcile import run


@pytest.fixture
def api(own_api: httpx.Client) -> httpx.Client:
    """Each test as a tenant of its own: the jobs these tests make by hand (one is left ``running``) take that
    tenant's ingest turns."""
    return own_api


def ingested(api: httpx.Client) -> tuple[str, bytes]:
    """A small document uploaded and ingested: its id and bytes."""
    content = f"The Pellmore canal lock opens at dawn, keeper {uuid.uuid4().hex}.\n".encode() * 4
    uploaded = upload(api, "canal.txt", content)
    assert uploaded.status_code == 202, uploaded.text
    wait_status(api, uploaded.json()["job_id"], "succeeded", timeout=120)
    return uploaded.json()["document_id"], content


def stuck_ingest(engine: Engine, document_id: str, **columns: str) -> uuid.UUID:
    """A new ingest job of the document, committed but never sent (as if the broker lost it), then aged or
    advanced with ``columns`` (SQL expressions); the document now follows it."""
    with Session(engine) as session, session.begin():
        tenant_id = session.execute(text("SELECT tenant_id FROM documents WHERE id = :d"), {"d": document_id}).scalar()
        job = repo.create(
            session,
            tenant_id=tenant_id,
            kind=JobKind.INGEST.value,
            task_name=TaskName.INGEST.value,
            queue="ingest",
            payload={"document_id": document_id, "kind": "text"},
            dispatched=False,
        )
        sets = ", ".join(f"{name} = {value}" for name, value in columns.items())
        if sets:
            session.execute(text(f"UPDATE jobs SET {sets} WHERE id = :id"), {"id": job.id})
        session.execute(text("UPDATE documents SET job_id = :j WHERE id = :d"), {"j": job.id, "d": document_id})
        return job.id


def assert_failed_then_queued_again(api: httpx.Client, document_id: str, content: bytes, reason: str) -> None:
    document = api.get(f"/v1/documents/{document_id}").json()
    assert document["status"] == "failed" and reason in (document["error"] or ""), document
    again = upload(api, "canal.txt", content)
    assert again.status_code == 202, again.text
    assert again.json()["document_id"] == document_id and again.json()["duplicate"] is True
    wait_status(api, again.json()["job_id"], "succeeded", timeout=120)
    assert api.get(f"/v1/documents/{document_id}").json()["status"] == "ready"


def test_a_document_follows_its_queued_then_running_job(api: httpx.Client, engine: Engine) -> None:
    document_id, _ = ingested(api)
    stuck_ingest(engine, document_id)
    assert api.get(f"/v1/documents/{document_id}").json()["status"] == "queued"
    stuck_ingest(engine, document_id, status="'running'", heartbeat_at="now()")
    assert api.get(f"/v1/documents/{document_id}").json()["status"] == "processing"


def test_an_ingest_cancelled_while_queued_fails_its_document_and_the_upload_queues_it_again(
    api: httpx.Client, engine: Engine
) -> None:
    document_id, content = ingested(api)
    job_id = stuck_ingest(engine, document_id)
    assert api.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    assert_failed_then_queued_again(api, document_id, content, "cancelled before it started")


def test_an_expired_ingest_fails_its_document_and_the_upload_queues_it_again(
    api: httpx.Client, engine: Engine, client: redis.Redis, dispatcher: Dispatcher
) -> None:
    document_id, content = ingested(api)
    stuck_ingest(engine, document_id, created_at="now() - interval '3 days'", dispatched_at="now() - interval '3 days'")
    assert run(engine, client, dispatcher)["expired"] >= 1
    assert_failed_then_queued_again(api, document_id, content, "not started within")


def test_an_ingest_whose_worker_was_lost_fails_its_document_and_the_upload_queues_it_again(
    api: httpx.Client, engine: Engine, client: redis.Redis, dispatcher: Dispatcher
) -> None:
    document_id, content = ingested(api)
    stuck_ingest(
        engine,
        document_id,
        status="'running'",
        attempts=str(dispatcher.settings.max_attempts),
        worker="'gone:1'",
        heartbeat_at="now() - interval '1 hour'",
    )
    assert run(engine, client, dispatcher)["failed_silent"] >= 1
    assert_failed_then_queued_again(api, document_id, content, "stopped answering (no heartbeat")


def test_an_ingest_that_fails_in_the_worker_fails_its_document_with_the_reason(api: httpx.Client) -> None:
    uploaded = upload(api, "empty-lines.txt", b"\n\n \n\t\n" * 10)
    assert uploaded.status_code == 202, uploaded.text
    job = wait_status(api, uploaded.json()["job_id"], "failed", timeout=120)
    document = api.get(f"/v1/documents/{uploaded.json()['document_id']}").json()
    assert document["status"] == "failed" and document["error"] == job["error"]["message"]  # type: ignore[index]
