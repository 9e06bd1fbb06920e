"""The ``chat`` queue: one answer per task. The shell; the work is in :mod:`protostar.chat.pipeline`."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import Task, shared_task
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from protostar.bundle import Clients
from protostar.chat.pipeline import answer
from protostar.constants import TaskName
from protostar.errors import BrokerUnavailable
from protostar.jobs import repo
from protostar.summary import submit
from protostar.worker import resources
from protostar.worker.shell import run_job

logger = logging.getLogger(__name__)


@shared_task(bind=True, name=TaskName.CHAT.value, acks_late=True)
def chat_task(self: Task, job_id: str) -> dict[str, Any] | None:
    clients = resources.current()
    result = run_job(
        self,
        clients,
        job_id,
        lambda ctx: answer(
            ctx, engine=clients.engine, embedder=clients.embedder, llm=clients.llm, settings=clients.settings
        ),
    )
    if result is not None:
        queue_summary(clients, job_id=job_id)
    return result


def queue_summary(clients: Clients, *, job_id: str) -> None:
    """Once enough of the session is unsummarized, queue its summary. The answer is saved already, so a failure
    here only delays the summary (beat queues it once the messages are stale) and never fails the answer."""
    try:
        with Session(clients.engine, expire_on_commit=False) as session:
            job = repo.get(session, job_id=uuid.UUID(job_id))
            if job is None:
                return
            submit.after_answer(
                session,
                dispatcher=clients.dispatcher,
                tenant_id=job.tenant_id,
                session_id=uuid.UUID(job.payload["session_id"]),
                every=clients.settings.summary_every,
            )
    except (BrokerUnavailable, SQLAlchemyError) as exc:
        logger.warning("job_id=%s summary not queued now: %s", job_id, exc)
