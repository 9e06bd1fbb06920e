"""All SQL on the ``jobs`` table.

Worker-side transitions are guarded by the attempt number taken at claim time: a worker whose job was taken
over (after its heartbeat stopped) can no longer write to it, so a late finisher never overwrites the winner.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, or_, select, text, update
from sqlalchemy.orm import Session

from protostar.constants import JobStatus
from protostar.db.models import Job
from protostar.errors import NotFound

QUEUED, RUNNING = JobStatus.QUEUED.value, JobStatus.RUNNING.value


def create(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    kind: str,
    task_name: str,
    queue: str,
    payload: dict[str, Any],
    job_id: uuid.UUID | None = None,
) -> Job:
    job = Job(
        id=job_id or uuid.uuid4(),
        tenant_id=tenant_id,
        kind=kind,
        task_name=task_name,
        queue=queue,
        payload=payload,
        status=QUEUED,
        progress_done=0,
        attempts=0,
        cancel_requested=False,
    )
    session.add(job)
    session.flush()
    return job


def get_for_tenant(session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != tenant_id:
        raise NotFound(f"job {job_id} not found")
    return job


def mark_dispatched(engine: Engine, *, job_id: uuid.UUID) -> None:
    """Record the send. Not fsync'd: if this write is lost, the reconciler finds the message in the broker."""
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL synchronous_commit = off"))
        conn.execute(update(Job).where(Job.id == job_id).values(dispatched_at=text("now()")))


def fail_queued(session: Session, *, job_id: uuid.UUID, code: str, message: str) -> Job | None:
    """End a job that never started (send failed, expired, cancelled while queued)."""
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == QUEUED)
        .values(status=JobStatus.FAILED.value, error_code=code, error_message=message, finished_at=text("now()"))
        .returning(Job)
    ).scalar_one_or_none()
    return row


def request_cancel(session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Job:
    """A queued job ends ``cancelled`` at once; a running one is flagged and its worker stops it."""
    job = get_for_tenant(session, tenant_id=tenant_id, job_id=job_id)
    if job.status == QUEUED:
        cancelled = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == QUEUED)
            .values(
                status=JobStatus.CANCELLED.value,
                cancel_requested=True,
                error_code="cancelled",
                error_message="cancelled before it started",
                finished_at=text("now()"),
            )
            .returning(Job)
        ).scalar_one_or_none()
        if cancelled is not None:
            return cancelled
        session.refresh(job)
    if job.status == RUNNING:
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
        session.refresh(job)
    return job


# --- worker side ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    job: Job | None
    reason: str  # "claimed", "missing", "finished", "cancelled", "busy"


def claim(engine: Engine, *, job_id: uuid.UUID, worker: str, takeover_after: float) -> Claim:
    """Take the job for this delivery, or say why not.

    A queued job is taken at once. A running job is taken only when its heartbeat is older than
    ``takeover_after`` (its worker died and the broker redelivered the message).
    """
    stale = text("now() - make_interval(secs => :takeover)").bindparams(takeover=takeover_after)
    stmt = (
        update(Job)
        .where(
            Job.id == job_id,
            Job.cancel_requested.is_(False),
            or_(Job.status == QUEUED, and_(Job.status == RUNNING, Job.heartbeat_at < stale)),
        )
        .values(
            status=RUNNING,
            attempts=Job.attempts + 1,
            worker=worker,
            started_at=text("coalesce(started_at, now())"),
            heartbeat_at=text("now()"),
            error_code=None,
            error_message=None,
        )
        .returning(Job)
    )
    with Session(engine, expire_on_commit=False) as session, session.begin():
        job = session.execute(stmt).scalar_one_or_none()
        if job is not None:
            return Claim(job, "claimed")
        current = session.get(Job, job_id)
        if current is None:
            return Claim(None, "missing")
        if current.status == QUEUED and current.cancel_requested:
            return Claim(current, "cancelled")
        if JobStatus(current.status).terminal:
            return Claim(current, "finished")
        return Claim(current, "busy")


def _owned(job_id: uuid.UUID, attempt: int) -> Any:
    return and_(Job.id == job_id, Job.status == RUNNING, Job.attempts == attempt)


def lock_owned(conn: Connection, *, job_id: uuid.UUID, attempt: int) -> bool:
    """In the caller's transaction, lock the job row if this delivery still owns it: a pipeline's final write
    goes through only then, so a delivery that lost its job can never overwrite the winner's results."""
    return conn.execute(select(Job.id).where(_owned(job_id, attempt)).with_for_update()).first() is not None


def heartbeat(engine: Engine, *, job_id: uuid.UUID, attempt: int) -> bool | None:
    """Beat; answers whether a cancel was requested, or None when this worker no longer owns the job."""
    with engine.begin() as conn:
        row = conn.execute(
            update(Job)
            .where(_owned(job_id, attempt))
            .values(heartbeat_at=text("now()"))
            .returning(Job.cancel_requested)
        ).first()
    return None if row is None else bool(row[0])


def progress(engine: Engine, *, job_id: uuid.UUID, attempt: int, stage: str, done: int, total: int | None) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(Job)
            .where(_owned(job_id, attempt))
            .values(stage=stage, progress_done=done, progress_total=total, heartbeat_at=text("now()"))
        )


def finish(
    engine: Engine,
    *,
    job_id: uuid.UUID,
    attempt: int,
    status: JobStatus,
    result: dict[str, Any] | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> bool:
    """Record the end of an owned job; False when another delivery owns it now."""
    with engine.begin() as conn:
        row = conn.execute(
            update(Job)
            .where(_owned(job_id, attempt))
            .values(
                status=status.value,
                result=result,
                error_code=error_code,
                error_message=error_message,
                finished_at=text("now()"),
            )
            .returning(Job.id)
        ).first()
    return row is not None


def release(engine: Engine, *, job_id: uuid.UUID, attempt: int, stage: str) -> bool:
    """Put an owned job back to ``queued`` (a retry is about to be sent)."""
    with engine.begin() as conn:
        row = conn.execute(
            update(Job)
            .where(_owned(job_id, attempt))
            .values(status=QUEUED, stage=stage, worker=None, heartbeat_at=None, dispatched_at=text("now()"))
            .returning(Job.id)
        ).first()
    return row is not None


# --- reconciler side -----------------------------------------------------------------------------------


def unsent(session: Session, *, older_than: datetime, limit: int) -> list[Job]:
    stmt = (
        select(Job)
        .where(Job.status == QUEUED, Job.dispatched_at.is_(None), Job.created_at < older_than)
        .order_by(Job.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.scalars(stmt))


def long_queued(session: Session, *, dispatched_before: datetime, limit: int) -> list[Job]:
    stmt = (
        select(Job)
        .where(Job.status == QUEUED, Job.dispatched_at < dispatched_before)
        .order_by(Job.dispatched_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.scalars(stmt))


def silent(session: Session, *, heartbeat_before: datetime, limit: int) -> list[Job]:
    stmt = (
        select(Job)
        .where(Job.status == RUNNING, Job.heartbeat_at < heartbeat_before)
        .order_by(Job.heartbeat_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.scalars(stmt))


def db_now(session: Session) -> datetime:
    return session.execute(select(text("now()"))).scalar_one()  # type: ignore[no-any-return]


def ago(now: datetime, seconds: float) -> datetime:
    return now - timedelta(seconds=seconds)
