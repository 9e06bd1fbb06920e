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
from protostar.jobs.context import JobContext
from protostar.summary import submit
from protostar.worker import resources
from protostar.worker.shell import run_job

logger = logging.getLogger(__name__)


@shared_task(bind=True, name=TaskName.CHAT.value, acks_late=True)
def chat_task(self: Task, job_id: str) -> dict[str, Any] | None:
    clients = resources.current()
    return run_job(self, clients, job_id, lambda ctx: answer_then_summarize(ctx, clients))


def answer_then_summarize(ctx: JobContext, clients: Clients) -> dict[str, Any]:
    result = answer(ctx, engine=clients.engine, embedder=clients.embedder, llm=clients.llm, settings=clients.settings)
    if "session_id" in ctx.payload:  # a completion (``messages`` in the payload) has no session to summarize
        queue_summary(clients, ctx=ctx)
    return result


def queue_summary(clients: Clients, *, ctx: JobContext) -> None:
    """Once enough of the session is unsummarized, queue its summary. The answer is saved already, so a failure
    here only delays the summary (beat queues it once the messages are stale) and never fails the answer."""
    try:
        with Session(clients.engine, expire_on_commit=False) as session:
            submit.after_answer(
                session,
                dispatcher=clients.dispatcher,
                tenant_id=ctx.tenant_id,
                session_id=uuid.UUID(ctx.payload["session_id"]),
                every=clients.settings.summary_every,
                backoff_base=clients.settings.summary_backoff_base,
                backoff_cap=clients.settings.summary_backoff_cap,
            )
    except (BrokerUnavailable, SQLAlchemyError) as exc:
        logger.warning("job_id=%s summary not queued now: %s", ctx.job_id, exc)
