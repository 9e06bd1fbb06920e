"""All SQL on the ``jobs`` table.

Worker-side transitions are guarded by the attempt number taken at claim time: a worker whose job was taken
over (after its heartbeat stopped) can no longer write to it, so a late finisher never overwrites the winner.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, Connection, Engine, Table, and_, bindparam, func, or_, select, text, update
from sqlalchemy.orm import Session

from protostar.constants import JobStatus
from protostar.db.models import Job
from protostar.db.owned import owned
from protostar.db.pages import newest_first
from protostar.errors import Conflict, WorkerLost
from protostar.jobs import outbox, usage
from protostar.jobs.ending import Ending

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
    dispatched: bool = True,
    stage: str | None = None,
) -> Job:
    """A ``queued`` job; ``dispatched``: counted as sent from its insert on (it is sent right after the commit,
    see ``jobs.turns``; a worker claims only such a job), else it waits unsent (``stage`` says why)."""
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
        stage=stage,
        dispatched_at=func.now() if dispatched else None,
    )
    session.add(job)
    session.flush()
    return job


def get(session: Session, *, job_id: uuid.UUID) -> Job | None:
    return session.get(Job, job_id)


def get_for_tenant(session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Job:
    return owned(session, Job, job_id, tenant_id=tenant_id, name="job")


def mark_dispatched(engine: Engine, *, job_id: uuid.UUID) -> None:
    """Record the send. Not fsync'd: if this write is lost, the reconciler finds the message in the broker."""
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL synchronous_commit = off"))
        conn.execute(update(Job).where(Job.id == job_id).values(dispatched_at=text("now()")))


def request_cancel(session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID) -> tuple[Job, bool]:
    """A queued job ends ``cancelled`` at once (answers True: it ended here); a running one is flagged and its
    worker stops it."""
    job = get_for_tenant(session, tenant_id=tenant_id, job_id=job_id)
    if job.status == QUEUED:
        ended = Ending(JobStatus.CANCELLED, "cancelled", "cancelled before it started")
        if finish(session.connection(), job_id=job_id, ending=ended, only_from=(JobStatus.QUEUED,)):
            session.refresh(job)
            return job, True
        session.refresh(job)
    if job.status == RUNNING:
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
        session.refresh(job)
    return job, False


@dataclass(frozen=True)
class JobFilter:
    kind: str | None = None
    status: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    document_id: uuid.UUID | None = None
    session_id: uuid.UUID | None = None


def page(
    session: Session, *, tenant_id: uuid.UUID, where: JobFilter, limit: int, cursor: str | None
) -> tuple[list[Job], str | None]:
    """The tenant's jobs, newest first, narrowed by ``where``; ``cursor`` continues the previous page."""
    stmt = select(Job).where(Job.tenant_id == tenant_id)
    if where.kind:
        stmt = stmt.where(Job.kind == where.kind)
    if where.status:
        stmt = stmt.where(Job.status == where.status)
    if where.created_after:
        stmt = stmt.where(Job.created_at >= where.created_after)
    if where.created_before:
        stmt = stmt.where(Job.created_at < where.created_before)
    if where.document_id:
        stmt = stmt.where(Job.payload["document_id"].astext == str(where.document_id))
    if where.session_id:
        stmt = stmt.where(Job.payload["session_id"].astext == str(where.session_id))
    return newest_first(session, stmt, model=Job, limit=limit, cursor=cursor)


def reopen(session: Session, *, job: Job, dispatched: bool, stage: str) -> Job:
    """Put a ``failed`` or ``cancelled`` job back to ``queued`` for a new round of attempts (its work is
    idempotent as ever), counted as sent (``dispatched``) or waiting unsent; ``Conflict`` for any other status
    (an ``IntegrityError`` when one of its kind is in flight already). Its previous ending's usage is taken
    back, so a job counts once, by its latest ending."""
    job_id = job.id
    before = session.execute(
        select(Job.status, Job.result, Job.finished_at).where(Job.id == job_id).with_for_update()
    ).one()
    reopened = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_((JobStatus.FAILED.value, JobStatus.CANCELLED.value)))
        .values(
            status=QUEUED,
            stage=stage,
            progress_done=0,
            progress_total=None,
            attempts=0,
            error_code=None,
            error_message=None,
            result=None,
            cancel_requested=False,
            worker=None,
            heartbeat_at=None,
            dispatched_at=func.now() if dispatched else None,
            started_at=None,
            finished_at=None,
        )
        .returning(Job)
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if reopened is None:
        raise Conflict(f"job {job_id} is {job.status}; only a failed or cancelled job can be retried")
    if before.finished_at is not None:  # its previous ending no longer counts: the new one will
        usage.uncount_ending(
            session.connection(),
            tenant_id=reopened.tenant_id,
            kind=reopened.kind,
            status=before.status,
            result=before.result,
            ended=before.finished_at,
        )
    return reopened


# --- worker side ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    """What the shell needs of a job it claimed (its row as the claim left it)."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    kind: str
    queue: str
    payload: dict[str, Any]
    attempts: int


@dataclass(frozen=True)
class Claim:
    job: Claimed | None  # the job, when claimed
    reason: str  # "claimed", "missing", "finished", "cancelled", "waiting", "busy", "worker_lost"
    retry_in: float | None = None  # "busy": seconds until the holder's heartbeat would be stale
    ending: Ending | None = None  # "worker_lost": how the job ended here (its followers are to be told)
    tenant_id: uuid.UUID | None = None  # "cancelled", "worker_lost": whose next turn may come
    queue: str | None = None


def worker_lost(attempts: int, max_attempts: int, silent_for: float) -> Ending:
    """The ending of a job whose worker died (or stopped answering) on its last allowed delivery."""
    message = (
        f"the worker running it kept dying or stopped answering (no heartbeat for {silent_for:.0f} s "
        f"on attempt {attempts} of {max_attempts}); giving up"
    )
    return Ending(JobStatus.FAILED, WorkerLost.code, message)


# The claim: one statement, committed on its own (autocommit: no BEGIN/COMMIT round trips). Built once, on the
# table (Core), not the mapped class: an ORM-enabled UPDATE sets up its ORM state again at every execution.
_TABLE = cast(Table, Job.__table__)
_JOBS = _TABLE.c
_CLAIM = (
    update(_TABLE)
    .where(
        _JOBS.id == bindparam("claim_id"),
        _JOBS.cancel_requested.is_(False),
        or_(
            and_(_JOBS.status == QUEUED, _JOBS.dispatched_at.is_not(None)),  # sent: not one waiting its turn
            and_(
                _JOBS.status == RUNNING,
                _JOBS.heartbeat_at < text("now() - make_interval(secs => :takeover)"),
                _JOBS.attempts < bindparam("max_attempts"),
            ),
        ),
    )
    .values(
        status=RUNNING,
        attempts=_JOBS.attempts + 1,
        worker=bindparam("claimer"),
        started_at=text("coalesce(started_at, now())"),
        heartbeat_at=text("now()"),
        error_code=None,
        error_message=None,
    )
    .returning(_JOBS.id, _JOBS.tenant_id, _JOBS.kind, _JOBS.queue, _JOBS.payload, _JOBS.attempts)
)


@contextmanager
def autocommit(engine: Engine) -> Iterator[Connection]:
    """A pooled connection on which each statement commits by itself: for single statements (the claim, an
    ending, heartbeats), which then cost one round trip instead of three (BEGIN, the statement, COMMIT)."""
    with engine.connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


def claim(engine: Engine, *, job_id: uuid.UUID, worker: str, takeover_after: float, max_attempts: int) -> Claim:
    """Take the job for this delivery, or say why not.

    A queued job that was sent is taken at once (one waiting its tenant's turn is not: ``"waiting"``, and a
    stray message of it is dropped, its turn sends it again). A running job is taken only when its heartbeat is
    older than ``takeover_after`` (its worker died and the broker redelivered the message), and only while attempts
    remain: every delivery counts, so an input that kills its worker each time runs ``max_attempts`` times and
    then ends ``failed`` with ``worker_lost`` here (reason ``"worker_lost"``; the caller publishes the end).

    The claim is one ``UPDATE … RETURNING``, committed by itself; only when it takes nothing does a second
    transaction look at the row to say why.
    """
    params = {"claim_id": job_id, "claimer": worker, "takeover": takeover_after, "max_attempts": max_attempts}
    with autocommit(engine) as conn:
        row = conn.execute(_CLAIM, params).first()
    if row is not None:
        return Claim(Claimed(*row), "claimed")
    return _not_claimed(engine, job_id=job_id, takeover_after=takeover_after, max_attempts=max_attempts)


def _not_claimed(engine: Engine, *, job_id: uuid.UUID, takeover_after: float, max_attempts: int) -> Claim:
    """Why the claim took nothing (the row locked meanwhile); a job whose worker died on its last attempt ends
    ``worker_lost`` here."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        current = session.execute(
            select(Job).where(Job.id == job_id).with_for_update().execution_options(populate_existing=True)
        ).scalar_one_or_none()
        if current is None:
            return Claim(None, "missing")
        if current.status == QUEUED and current.cancel_requested:
            return Claim(None, "cancelled", tenant_id=current.tenant_id, queue=current.queue)
        if JobStatus(current.status).terminal:
            return Claim(None, "finished")
        if current.status == QUEUED and current.dispatched_at is None:
            return Claim(None, "waiting")  # a stray delivery of a job waiting its turn: its turn sends it again
        age = session.execute(
            select(func.extract("epoch", func.now() - Job.heartbeat_at)).where(Job.id == job_id)
        ).scalar_one()
        silent_for = float(age) if age is not None else takeover_after
        if current.status == RUNNING and silent_for > takeover_after and current.attempts >= max_attempts:
            ending = worker_lost(current.attempts, max_attempts, silent_for)
            if current.cancel_requested:
                ending = Ending(JobStatus.CANCELLED, "cancelled", "cancelled; its worker stopped answering")
            if finish(session.connection(), job_id=job_id, ending=ending, only_from=(JobStatus.RUNNING,)):
                return Claim(None, "worker_lost", ending=ending, tenant_id=current.tenant_id, queue=current.queue)
        return Claim(None, "busy", retry_in=max(1.0, takeover_after - silent_for + 1.0))


def _owned(job_id: uuid.UUID, attempt: int) -> ColumnElement[bool]:
    return and_(Job.id == job_id, Job.status == RUNNING, Job.attempts == attempt)


def lock_owned(conn: Connection, *, job_id: uuid.UUID, attempt: int) -> bool:
    """In the caller's transaction, lock the job row if this delivery still owns it: a pipeline's final write
    goes through only then, so a delivery that lost its job can never overwrite the winner's results."""
    return conn.execute(select(Job.id).where(_owned(job_id, attempt)).with_for_update()).first() is not None


@dataclass(frozen=True)
class Beat:
    """One running job's heartbeat, with the progress it has not written to its row yet (``stage`` not None)."""

    job_id: uuid.UUID
    attempt: int
    stage: str | None = None
    done: int = 0
    total: int | None = None


# Every job a worker process runs beats in one statement (``jobs.watcher``), writing pending progress with it.
_BEAT = text(
    """
    UPDATE jobs SET heartbeat_at = now(),
        stage = CASE WHEN b.stage IS NULL THEN jobs.stage ELSE b.stage END,
        progress_done = CASE WHEN b.stage IS NULL THEN jobs.progress_done ELSE b.done END,
        progress_total = CASE WHEN b.stage IS NULL THEN jobs.progress_total ELSE b.total END
    FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[]), CAST(:stages AS text[]), CAST(:dones AS int[]),
                CAST(:totals AS int[])) AS b(id, attempt, stage, done, total)
    WHERE jobs.id = b.id AND jobs.status = 'running' AND jobs.attempts = b.attempt
    RETURNING jobs.id, jobs.cancel_requested
    """
)


def heartbeat(engine: Engine, beats: list[Beat]) -> dict[uuid.UUID, bool]:
    """Beat these jobs (and write their pending progress) in one statement; for each job this worker still owns,
    whether a cancel was requested. A job missing from the answer was taken over (or has ended)."""
    params = {
        "ids": [b.job_id for b in beats],
        "attempts": [b.attempt for b in beats],
        "stages": [b.stage for b in beats],
        "dones": [b.done for b in beats],
        "totals": [b.total for b in beats],
    }
    with autocommit(engine) as conn:
        return {row[0]: bool(row[1]) for row in conn.execute(_BEAT, params)}


@dataclass(frozen=True)
class Finished:
    """An ending recorded: the webhook deliveries it made (to send once it is committed)."""

    deliveries: list[uuid.UUID]


def finish(
    conn: Connection,
    *,
    job_id: uuid.UUID,
    ending: Ending,
    attempt: int | None = None,
    only_from: tuple[JobStatus, ...] = (JobStatus.RUNNING,),
    job: Claimed | None = None,
    progress: Beat | None = None,
) -> Finished | None:
    """Record the end of a job in the caller's transaction; None when it was not ours to end.

    Every path that ends a job comes here: the worker's shell (success, failure, cancel) with its ``attempt``,
    so a delivery that lost its job never ends it; the reconciler (expired, worker lost, a silent job whose
    cancel was pending) and the cancel of a queued job or a send that failed, from the statuses ``only_from``.
    A document's status needs no write here: it is read from its latest ingest job (``documents.repo``). The
    end's webhook deliveries are written here too (the outbox), and sent once the caller has committed
    (``Finished.deliveries``, or ``Dispatcher.send_webhooks``), or by the reconciler if that send is lost.
    The tenant's usage is counted here, in the same transaction (``jobs.usage``): once per ending, never lost.

    The worker's shell passes the ``job`` it claimed (and the ``progress`` its row still lacks): then the whole
    ending (row, usage, outbox) is ONE statement, which may run on an autocommit connection.
    """
    if job is not None and attempt is not None:
        return _finish_claimed(conn, job=job, attempt=attempt, ending=ending, progress=progress)
    guard = _owned(job_id, attempt) if attempt is not None else and_(Job.id == job_id, Job.status.in_(only_from))
    returning = (Job.id, Job.tenant_id, Job.kind, Job.payload)
    ended = conn.execute(update(Job).where(guard).values(**_ending_values(ending)).returning(*returning)).first()
    if ended is None:
        return None
    # The webhook events of this end, in the same transaction: written with it or not at all (``jobs.outbox``).
    made = outbox.fan_out(
        conn, job_id=ended[0], tenant_id=ended[1], kind=ended[2], payload=ended[3] or {}, ending=ending
    )
    usage.count_ending(conn, tenant_id=ended[1], kind=ended[2], ending=ending)
    return Finished(made)


def _ending_values(ending: Ending) -> dict[str, Any]:
    values: dict[str, Any] = {
        "status": ending.status.value,
        "result": ending.result,
        "error_code": ending.code,
        "error_message": ending.message,
        "finished_at": text("now()"),
    }
    if ending.status == JobStatus.CANCELLED:
        values["cancel_requested"] = True
    return values


def _finish_claimed(
    conn: Connection, *, job: Claimed, attempt: int, ending: Ending, progress: Beat | None
) -> Finished | None:
    """:func:`finish` in one statement: the row's end (if this delivery still owns it), then, from what it
    returns, the usage count and the outbox rows (data-modifying CTEs: all or nothing, one round trip)."""
    sets = ["status = :f_status", "result = :f_result", "error_code = :f_code", "error_message = :f_message"]
    sets.append("finished_at = now()")
    if ending.status == JobStatus.CANCELLED:
        sets.append("cancel_requested = true")
    params: dict[str, Any] = {
        "f_id": job.id,
        "f_attempt": attempt,
        "f_status": ending.status.value,
        "f_result": ending.result,
        "f_code": ending.code,
        "f_message": ending.message,
    }
    if progress is not None and progress.stage is not None:
        sets += ["stage = :f_stage", "progress_done = :f_done", "progress_total = :f_total"]
        params.update(f_stage=progress.stage, f_done=progress.done, f_total=progress.total)
    owned = "id = :f_id AND status = 'running' AND attempts = :f_attempt"
    ended = f"UPDATE jobs SET {', '.join(sets)} WHERE {owned}"  # noqa: S608 (names and placeholders only)
    ctes = [f"ended AS ({ended} RETURNING id, tenant_id)"]
    binds = [bindparam("f_result", type_=Job.result.type)]
    sql, more = usage.count_ending_sql("ended", kind=job.kind, ending=ending)
    ctes.append(f"counted AS ({sql})")
    params.update(more)
    made = []
    for i, event in enumerate(
        outbox.fan_out_sql("ended", job_id=job.id, kind=job.kind, payload=job.payload, ending=ending)
    ):
        ctes.append(f"made{i} AS ({event.sql})")
        made.append(f"SELECT id FROM made{i}")  # noqa: S608 (names only)
        params.update(event.params)
        binds += event.binds
    deliveries = f"ARRAY({' UNION ALL '.join(made)})" if made else "CAST(ARRAY[] AS uuid[])"
    stmt = text(f"WITH {', '.join(ctes)} SELECT {deliveries} FROM ended")  # noqa: S608 (names, placeholders)
    stmt = stmt.bindparams(*binds)
    row = conn.execute(stmt, params).first()
    return None if row is None else Finished(list(row[0]))


def release(engine: Engine, *, job_id: uuid.UUID, attempt: int, stage: str) -> bool:
    """Put an owned job back to ``queued``: a retry after a transient failure is about to be sent. The delivery
    that met an unavailable dependency gives its attempt back (``max_attempts`` bounds deliveries that died or
    failed on the job itself; ``transient_retries`` bounds these), so an outage cannot use up a job's attempts."""
    with autocommit(engine) as conn:
        row = conn.execute(
            update(Job)
            .where(_owned(job_id, attempt))
            .values(
                status=QUEUED,
                stage=stage,
                worker=None,
                heartbeat_at=None,
                dispatched_at=text("now()"),
                attempts=Job.attempts - 1,
            )
            .returning(Job.id)
        ).first()
    return row is not None


def requeue(conn: Connection, *, job_id: uuid.UUID) -> None:
    """Put a running job whose worker went silent back to ``queued`` (the reconciler sends it again)."""
    conn.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == RUNNING)
        .values(status=QUEUED, stage="requeued", worker=None, heartbeat_at=None, dispatched_at=text("now()"))
    )


def mark_sent(conn: Connection, *, job_id: uuid.UUID) -> None:
    """Record a send made by the reconciler, in its transaction."""
    conn.execute(update(Job).where(Job.id == job_id).values(dispatched_at=text("now()")))


# --- reconciler side -----------------------------------------------------------------------------------


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


def open_counts(conn: Connection) -> list[tuple[str, str, int]]:
    """(kind, status, count) of the jobs queued or running, for the metrics endpoint."""
    rows = conn.execute(
        select(Job.kind, Job.status, func.count())
        .where(Job.status.in_((QUEUED, RUNNING)))
        .group_by(Job.kind, Job.status)
    ).all()
    return [(r[0], r[1], int(r[2])) for r in rows]


def in_flight(session: Session, *, kind: str, key: str, value: str) -> Job | None:
    """The queued or running job of ``kind`` whose payload ``key`` is ``value`` (kinds with one in flight)."""
    stmt = select(Job).where(Job.kind == kind, Job.status.in_((QUEUED, RUNNING)), Job.payload[key].astext == value)
    return session.scalars(stmt).first()
