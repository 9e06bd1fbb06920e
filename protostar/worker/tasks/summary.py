"""The ``summary`` queue: a session's rolling summary, or a document's summary. Shells; the work is in
:mod:`protostar.summary.pipeline`."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from protostar.bundle import Clients
from protostar.constants import TaskName
from protostar.jobs.context import JobContext
from protostar.summary.parts import Parts
from protostar.summary.pipeline import summarize_document, summarize_session
from protostar.worker import resources
from protostar.worker.shell import run_job


@shared_task(bind=True, name=TaskName.SUMMARY_SESSION.value, acks_late=True)
def summary_session_task(self: Task, job_id: str) -> dict[str, Any] | None:
    c = resources.current()
    return run_job(
        self,
        c,
        job_id,
        lambda ctx: summarize_session(ctx, engine=c.engine, llm=c.llm, settings=c.settings, parts=_parts(c, ctx)),
    )


@shared_task(bind=True, name=TaskName.SUMMARY_DOCUMENT.value, acks_late=True)
def summary_document_task(self: Task, job_id: str) -> dict[str, Any] | None:
    c = resources.current()
    return run_job(
        self,
        c,
        job_id,
        lambda ctx: summarize_document(ctx, engine=c.engine, llm=c.llm, settings=c.settings, parts=_parts(c, ctx)),
    )


def _parts(clients: Clients, ctx: JobContext) -> Parts:
    """Where the job keeps its finished LLM calls across deliveries (it may be sent again to wait for a turn)."""
    return Parts(clients.redis, job_id=ctx.job_id, ttl=clients.settings.task_expires)
