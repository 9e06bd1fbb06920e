"""The ``summary`` queue: a session's rolling summary, or a document's summary. Shells; the work is in
:mod:`protostar.summary.pipeline`."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from protostar.constants import TaskName
from protostar.summary.pipeline import summarize_document, summarize_session
from protostar.worker import resources
from protostar.worker.shell import run_job


@shared_task(bind=True, name=TaskName.SUMMARY_SESSION.value, acks_late=True)
def summary_session_task(self: Task, job_id: str) -> dict[str, Any] | None:
    c = resources.current()
    return run_job(self, c, job_id, lambda ctx: summarize_session(ctx, engine=c.engine, llm=c.llm, settings=c.settings))


@shared_task(bind=True, name=TaskName.SUMMARY_DOCUMENT.value, acks_late=True)
def summary_document_task(self: Task, job_id: str) -> dict[str, Any] | None:
    c = resources.current()
    return run_job(
        self, c, job_id, lambda ctx: summarize_document(ctx, engine=c.engine, llm=c.llm, settings=c.settings)
    )
