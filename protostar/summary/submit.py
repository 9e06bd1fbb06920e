"""Queueing summary jobs, at most one in flight per session or document (a partial unique index on ``jobs``
decides, so concurrent callers never queue two): on request (the API), after a chat answer once enough
messages are unsummarized, and from beat for sessions that went stale."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.orm import Session

from protostar.constants import TASK_QUEUES, JobKind, TaskName
from protostar.db.models import Job
from protostar.jobs.dispatch import Dispatcher
from protostar.summary import repo

logger = logging.getLogger(__name__)

_TASKS = {JobKind.SUMMARY_SESSION: TaskName.SUMMARY_SESSION, JobKind.SUMMARY_DOCUMENT: TaskName.SUMMARY_DOCUMENT}
_KEYS = {JobKind.SUMMARY_SESSION: "session_id", JobKind.SUMMARY_DOCUMENT: "document_id"}


def try_submit(
    session: Session, *, dispatcher: Dispatcher, kind: JobKind, tenant_id: uuid.UUID, target_id: uuid.UUID
) -> Job | None:
    """Queue a summary of ``target_id`` (a session or a document); ``None`` when one is in flight already."""
    task = _TASKS[kind]
    return dispatcher.submit_unique(
        session,
        tenant_id=tenant_id,
        kind=kind.value,
        task_name=task.value,
        queue=TASK_QUEUES[task].value,
        payload={_KEYS[kind]: str(target_id)},
    )


def submit(
    session: Session, *, dispatcher: Dispatcher, kind: JobKind, tenant_id: uuid.UUID, target_id: uuid.UUID
) -> Job:
    """The summary job of ``target_id``: a new one, or the one already queued or running."""
    for _ in range(3):  # the job in flight may end between our insert and our look-up: then insert again
        job = try_submit(session, dispatcher=dispatcher, kind=kind, tenant_id=tenant_id, target_id=target_id)
        if job is None:
            job = repo.in_flight_job(session, kind=kind, key=_KEYS[kind], value=target_id)
        if job is not None:
            return job
    raise AssertionError(f"no summary job for {target_id} after three tries")  # pragma: no cover


def after_answer(
    session: Session, *, dispatcher: Dispatcher, tenant_id: uuid.UUID, session_id: uuid.UUID, every: int
) -> Job | None:
    """Queue the session's summary once ``every`` messages are unsummarized and none is in flight."""
    unsummarized = repo.count_after(session, session_id=session_id)
    if unsummarized < every:
        return None
    if repo.in_flight_job(session, kind=JobKind.SUMMARY_SESSION, key="session_id", value=session_id) is not None:
        return None  # cheap check first; the unique index is what decides
    job = try_submit(
        session, dispatcher=dispatcher, kind=JobKind.SUMMARY_SESSION, tenant_id=tenant_id, target_id=session_id
    )
    if job is not None:
        logger.info("job_id=%s session_id=%s summary queued (%d unsummarized)", job.id, session_id, unsummarized)
    return job


def resummarize(session: Session, *, dispatcher: Dispatcher, stale_after: float, batch: int) -> list[uuid.UUID]:
    """Beat: queue summaries for up to ``batch`` sessions whose unsummarized answers are older than
    ``stale_after`` seconds and that have no summary job in flight; the ids of the sessions queued."""
    stale = repo.stale_sessions(session, stale_after=stale_after, limit=batch)
    session.commit()
    queued = []
    for session_id, tenant_id in stale:
        if try_submit(
            session, dispatcher=dispatcher, kind=JobKind.SUMMARY_SESSION, tenant_id=tenant_id, target_id=session_id
        ):
            queued.append(session_id)
    if stale:
        logger.info("resummarize: %d stale sessions, %d queued", len(stale), len(queued))
    return queued
