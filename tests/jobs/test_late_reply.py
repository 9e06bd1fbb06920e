"""A send whose broker reply fails: the job row decides what happened, for every submit path that keeps a row
of its own (an upload's document, a question's message). Still ``queued`` means nothing will run it: the job
ends ``failed``, the row goes, the caller gets 503. Claimed by a worker means the send went through and only
its reply was lost: the job stands and nothing is deleted under it."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kombu.exceptions import OperationalError
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from protostar.auth import DEFAULT_TENANT, ensure_tenant
from protostar.bundle import Clients
from protostar.chat.submit import ask
from protostar.db.models import Document, Job, Message
from protostar.documents.upload import upload
from protostar.errors import BrokerUnavailable
from protostar.jobs.dispatch import Dispatcher
from protostar.jobs.turns import Released
from tests.conftest import Live, wait_for


def job_status(engine: Engine, job_id: uuid.UUID) -> str | None:
    with engine.connect() as conn:
        found = conn.execute(text("SELECT status FROM jobs WHERE id = :id"), {"id": job_id}).scalar()
    return str(found) if found is not None else None


@dataclass
class LateReply(Dispatcher):
    """The message reaches the broker and a worker claims the job; only then does the reply fail."""

    def send(self, job: Job | Released, status: dict[str, Any] | None = None) -> None:
        super().send(job, status)
        wait_for(lambda: job_status(self.engine, job.id) != "queued", timeout=30, what="a worker to claim it")
        raise OperationalError("timed out reading from the broker")


@dataclass
class NothingSent(Dispatcher):
    def send(self, job: Job | Released, status: dict[str, Any] | None = None) -> None:
        raise OperationalError("timed out reading from the broker")


@pytest.fixture(scope="module")
def clients(live: Live) -> Iterator[Clients]:
    from protostar.jobs.broker import create_celery

    made = Clients(settings=live.settings, celery=create_celery(live.settings, role="api"), role="api")
    yield made
    made.close()


def dispatcher_of(kind: type[Dispatcher], clients: Clients) -> Dispatcher:
    return kind(celery=clients.celery, engine=clients.engine, events=clients.events, settings=clients.settings)


def new_chat(engine: Engine) -> tuple[uuid.UUID, uuid.UUID]:
    with Session(engine) as session, session.begin():
        tenant = ensure_tenant(session, DEFAULT_TENANT)
        session_id = session.execute(
            text("INSERT INTO sessions (id, tenant_id) VALUES (gen_random_uuid(), :t) RETURNING id"), {"t": tenant}
        ).scalar_one()
    return tenant, session_id


def test_a_question_whose_send_reply_was_late_is_kept_and_answered(clients: Clients, engine: Engine) -> None:
    tenant, session_id = new_chat(engine)
    asked = ask(
        dispatcher_of(LateReply, clients),
        tenant_id=tenant,
        session_id=session_id,
        content="What is the late reply?",
    )
    with Session(engine) as session:
        assert session.get(Message, asked.message_id) is not None  # not deleted under the running job
    assert job_status(engine, asked.job_id) in ("running", "succeeded", "failed")


def test_a_question_that_was_never_sent_is_not_kept(clients: Clients, engine: Engine) -> None:
    tenant, session_id = new_chat(engine)
    with pytest.raises(BrokerUnavailable):
        ask(
            dispatcher_of(NothingSent, clients),
            tenant_id=tenant,
            session_id=session_id,
            content="Is anyone there?",
        )
    with engine.connect() as conn:
        kept = conn.execute(text("SELECT count(*) FROM messages WHERE session_id = :s"), {"s": session_id}).scalar()
        jobs = conn.execute(
            text("SELECT status FROM jobs WHERE payload->>'session_id' = :s"), {"s": str(session_id)}
        ).all()
    assert kept == 0 and [j[0] for j in jobs] == ["failed"]


def test_an_upload_whose_send_reply_was_late_is_kept(clients: Clients, engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        tenant = ensure_tenant(session, DEFAULT_TENANT)
    body = f"A late reply from the broker, {uuid.uuid4().hex}.".encode()
    with Session(clients.engine) as session:
        uploaded = upload(
            session,
            bucket=clients.bucket,
            dispatcher=dispatcher_of(LateReply, clients),
            tenant_id=tenant,
            file=io.BytesIO(body),
            filename="late.txt",
            metadata={},
            limit=1024 * 1024,
        )
        document_id = uploaded.document.id
    with Session(engine) as session:
        document = session.get(Document, document_id)
        assert document is not None and document.job_id is not None
        assert job_status(engine, document.job_id) in ("running", "succeeded", "failed")
