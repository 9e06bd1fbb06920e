"""Commit the row, then send the task: the one path by which work enters a queue.

``submit(kind, …)`` reads the job-kind table for the task, the queue and whether one job may be in flight per
target. Its tenant's turn decides whether the job is sent now (``jobs.turns``): the row is committed either as
sent (``dispatched_at`` set in the insert, then the send) or waiting its turn (stage ``waiting_turn``, not sent;
``next_turn`` sends it when one of the tenant's jobs on that queue ends). Past the tenant's queued-jobs quota
nothing is written and the caller gets ``429``. If the broker cannot take the message, the row decides what
happened: still ``queued`` means nothing was sent, so the job ends ``failed`` and the caller gets ``503``;
anything else means a worker already has the message (the send went through and only its reply was late), so
the job stands.
"""

from __future__ import annotations

import json
import logging
import uuid
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError
from redis.commands.core import Script
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from protostar.constants import EventType, JobKind, JobStatus, Queue
from protostar.db.models import Job
from protostar.errors import BrokerUnavailable, Conflict, ValidationFailed
from protostar.jobs import faults, outbox, repo, turns
from protostar.jobs.broker import task_message
from protostar.jobs.ending import Ending
from protostar.jobs.events import EventLog, cancel_key, stream_key
from protostar.jobs.kinds import KINDS, PROBE_QUEUES, send_options
from protostar.runtime.llm_state import waiting_note
from protostar.settings import Settings

logger = logging.getLogger(__name__)

BROKER_ERRORS = (OperationalError, redis.RedisError, OSError)
NOT_QUEUED = "the task queue is unavailable; nothing was queued, try again"

QUEUED = JobStatus.QUEUED.value
TURN_CAME = {"reason": "its tenant's turn came: sent to the queue"}  # the queued event of a job sent by next_turn

# Partial unique indexes on ``jobs`` that allow one job in flight per key (see protostar.db.models.Job).
IN_FLIGHT_INDEXES = frozenset({"uq_jobs_summary_session_in_flight", "uq_jobs_summary_document_in_flight"})


# XADD the job's first event and set the stream's TTL, only while the stream does not exist (one round trip).
_FIRST_EVENT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'type', ARGV[1], 'data', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""

_STILL_WAITING = text("SELECT 1 FROM jobs WHERE id = :id AND status = 'queued' AND dispatched_at IS NULL FOR UPDATE")


@dataclass(frozen=True)
class _Row:
    """A job about to be inserted (``turns.insert``), and the row it is once inserted."""

    job_id: uuid.UUID
    tenant_id: uuid.UUID
    kind: str
    task_name: str
    queue: str
    payload: dict[str, Any]

    def insert(
        self,
        conn: Connection,
        settings: Settings,
        *,
        quota: bool,
        alone: bool = False,
        around: turns.Around | None = None,
    ) -> turns.Inserted:
        return turns.insert(
            conn,
            settings,
            job_id=self.job_id,
            tenant_id=self.tenant_id,
            kind=self.kind,
            task_name=self.task_name,
            queue=self.queue,
            payload=self.payload,
            quota=quota,
            alone=alone,
            around=around,
        )

    def job(self, inserted: turns.Inserted) -> Job:
        """The row as inserted (not attached to any session)."""
        sent = inserted.admission.send
        return Job(
            id=self.job_id,
            tenant_id=self.tenant_id,
            kind=self.kind,
            task_name=self.task_name,
            queue=self.queue,
            payload=self.payload,
            status=QUEUED,
            stage=None if sent else turns.WAITING_TURN,
            progress_done=0,
            progress_total=None,
            attempts=0,
            error_code=None,
            error_message=None,
            result=None,
            cancel_requested=False,
            worker=None,
            created_at=inserted.created_at,
            dispatched_at=inserted.created_at if sent else None,
            started_at=None,
            heartbeat_at=None,
            finished_at=None,
        )


@dataclass(frozen=True)
class Submitted:
    job: Job
    created: bool  # False: a job of this kind for the same target was in flight already, and is the answer


@dataclass
class Dispatcher:
    celery: Celery
    engine: Engine
    events: EventLog
    settings: Settings

    def send(self, job: Job | turns.Released, status: dict[str, Any] | None = None) -> None:
        """Send ``job``'s task, after its ``status`` event when given, in one round trip to Redis (the broker and
        the event log): the event first, so no worker's ``running`` can come before it. The task id is the job
        id, so a second send is harmless; results live in the jobs table (no result to subscribe to), and
        Flower learns of the task when a worker receives it (no "sent" event, from the API or a worker:
        ``jobs.broker.task_message``). When the broker fails, the event may have been written without the
        message (the pipeline is not a transaction): the caller decides from the row, as for a failed send."""
        message = task_message(
            self.celery,
            job.task_name,
            task_id=str(job.id),
            queue=job.queue,
            kwargs={"job_id": str(job.id)},
            **send_options(self.settings, job.queue),
        )
        pipe = self.events.client.pipeline(transaction=False)
        if status is not None:
            self.events.append(pipe, job.id, [(EventType.STATUS, status)])
        pipe.lpush(job.queue, message)
        pipe.execute()

    def send_webhooks(self, *, job_id: uuid.UUID) -> int:
        """After the commit of a job's end: send the webhook deliveries it made (``jobs.outbox``); how many. Never
        raises for an unavailable dependency: what is not sent here, the reconciler sends."""
        try:
            with self.engine.connect() as conn:
                ids = outbox.unsent_of_job(conn, job_id=job_id)
            return self.send_deliveries(ids)
        except Exception as exc:  # boundary: a job's end never fails on its webhooks
            if faults.dependency(exc) is None and not isinstance(exc, BROKER_ERRORS):
                raise
            logger.warning("job_id=%s webhook deliveries not sent now (the reconciler will): %s", job_id, exc)
            return 0

    def send_deliveries(self, ids: list[uuid.UUID], *, countdown: float | None = None) -> int:
        """Send these webhook deliveries' tasks (to run in ``countdown`` s: a retry), then record the sends;
        broker errors are the caller's."""
        for delivery_id in ids:
            outbox.send(self.celery, self.settings, delivery_id, countdown=countdown)
        if ids:
            with self.engine.begin() as conn:
                outbox.mark_sent(conn, ids)
        return len(ids)

    def submit(
        self,
        session: Session | None,
        *,
        kind: JobKind,
        tenant_id: uuid.UUID,
        payload: dict[str, Any],
        job_id: uuid.UUID | None = None,
        queue: Queue | None = None,
        quota: bool = True,
        around: turns.Around | None = None,
    ) -> Submitted:
        """Commit the job (with whatever else ``session`` holds), then send it, or leave it waiting for its
        tenant's turn. For a kind with one job in flight per target, the job already queued or running for that
        target is the answer (``created=False``). ``quota``: refuse past the tenant's queued-jobs quota
        (``TooManyRequests``, nothing written); the automatic summaries (after an answer, beat) pass False.

        Without a session, or with one that holds no transaction, the job is committed by one statement in
        autocommit (``turns.insert``): one round trip to the database, its turn lock held only while it runs.
        ``around`` (without a session): a statement that writes more with the job, in that one round trip
        (``turns.Around``; a chat question's message)."""
        spec = KINDS[kind]
        target_queue = spec.queue or queue
        if target_queue is None or (spec.queue is None and target_queue not in PROBE_QUEUES):
            raise ValidationFailed(f"queue must be one of {', '.join(q.value for q in PROBE_QUEUES)}")
        row = _Row(
            job_id=job_id or uuid.uuid4(),
            tenant_id=tenant_id,
            kind=kind.value,
            task_name=spec.task.value,
            queue=target_queue.value,
            payload=payload,
        )
        alone = session is None or not (session.in_transaction() or session.new or session.dirty or session.deleted)
        key = spec.one_in_flight
        for _ in range(3):  # the job in flight may end between our insert and our look-up: then insert again
            try:
                if alone:
                    with repo.autocommit(self.engine) as conn:
                        inserted = row.insert(conn, self.settings, quota=quota, alone=True, around=around)
                    return Submitted(self._send_committed(row.job(inserted), inserted.admission), created=True)
                assert session is not None
                nested: AbstractContextManager[object] = session.begin_nested() if key is not None else nullcontext()
                with nested:
                    inserted = row.insert(session.connection(), self.settings, quota=quota)
                return Submitted(self._commit_and_send(session, row.job(inserted), inserted.admission), created=True)
            except IntegrityError as exc:
                if key is None or getattr(getattr(exc.orig, "diag", None), "constraint_name", None) not in (
                    IN_FLIGHT_INDEXES
                ):
                    raise
                if session is not None:
                    session.commit()  # whatever else the session holds
                    existing = repo.in_flight(session, kind=kind.value, key=key, value=str(payload[key]))
                else:
                    with Session(self.engine) as reader:
                        existing = repo.in_flight(reader, kind=kind.value, key=key, value=str(payload[key]))
                if existing is not None:
                    return Submitted(existing, created=False)
        raise AssertionError(f"no {kind.value} job for {payload[key or '']} after three tries")  # pragma: no cover

    def check_quota(self, session: Session, *, tenant_id: uuid.UUID, queue: Queue) -> None:
        """``TooManyRequests`` when the tenant may queue no more jobs on ``queue``: asked before costly work (an
        upload is stored only after this); the submit asks again, under its lock."""
        turns.check_quota(session.connection(), self.settings, tenant_id=tenant_id, queue=queue.value)

    def retry(self, session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Job:
        """Run a ``failed`` or ``cancelled`` job again under the same id: its row back to ``queued`` with a new
        round of attempts, its old events and cancel flag cleared (a follower sees only the new run), then sent
        (or left to wait its tenant's turn)."""
        current = repo.get_for_tenant(session, tenant_id=tenant_id, job_id=job_id)
        admission = turns.admit(
            session.connection(), self.settings, tenant_id=tenant_id, queue=current.queue, quota=True
        )
        try:
            stage = "retry" if admission.send else turns.WAITING_TURN
            job = repo.reopen(session, job=current, dispatched=admission.send, stage=stage)
            session.flush()
        except IntegrityError as exc:  # one of its kind is in flight for the same target (summaries)
            session.rollback()
            raise Conflict(f"a job like {job_id} is queued or running already; follow that one") from exc
        self.events.client.delete(stream_key(job.id), cancel_key(job.id))
        return self._commit_and_send(session, job, admission)

    def next_turn(self, *, tenant_id: uuid.UUID, queue: str) -> int:
        """Send the tenant's oldest jobs waiting their turn on ``queue`` that now fit under its cap (a job of
        its there ended); how many. Each is marked sent and committed first (one statement in autocommit,
        ``turns.take``): a job whose send fails waits its turn again (``turns.unsend``), for the next ending or
        the reconciler to send (its stream may already say its turn came: the event goes first; the next turn
        says it again)."""
        if Queue(queue) not in self.settings.tenant_inflight:
            return 0
        with repo.autocommit(self.engine) as conn:
            released = turns.take(conn, tenant_id=tenant_id, queue=queue, limit=turns.cap(self.settings, queue))
        unsent = []
        for job in released:
            try:
                self.send(job, {"status": JobStatus.QUEUED.value, **TURN_CAME})
            except BROKER_ERRORS as exc:
                logger.warning("job_id=%s its turn came but it could not be sent (it waits again): %s", job.id, exc)
                unsent.append(job.id)
        if unsent:  # not left counted in flight with no message: the next ending (or the reconciler) sends them
            with repo.autocommit(self.engine) as conn:
                turns.unsend(conn, job_ids=unsent)
        if released:
            logger.info("tenant=%s queue=%s sent %d jobs whose turn came", tenant_id, queue, len(released))
        return len(released)

    def _queued(self, job: Job, admission: turns.Admission) -> dict[str, Any]:
        """The ``queued`` event: why it waits, when it waits for its tenant's turn, or for the embedded LLM still
        being built."""
        data: dict[str, Any] = {"status": JobStatus.QUEUED.value}
        if not admission.send:
            data.update(
                waiting_for="turn",
                in_flight=admission.in_flight,
                cap=admission.cap,
                message=f"{admission.in_flight} jobs of this tenant are in flight on the {job.queue} queue, its cap; "
                "this one is sent when one of them ends",
            )
        elif job.queue in (Queue.CHAT.value, Queue.SUMMARY.value):
            data.update(waiting_note(self.events.client) or {})
        return data

    def _commit_and_send(self, session: Session, job: Job, admission: turns.Admission) -> Job:
        if not admission.send:
            # It waits its turn. Its event goes first: with Redis away nothing is accepted (503, as a send that
            # fails), and no ending can send it (and tell its followers) before this event is written.
            try:
                self.events.publish(job.id, EventType.STATUS, self._queued(job, admission))
            except BROKER_ERRORS as exc:
                logger.warning("job_id=%s not accepted, its events cannot be written: %s", job.id, exc)
                session.rollback()
                raise BrokerUnavailable(NOT_QUEUED) from exc
            session.commit()
            return job
        session.commit()
        return self._send_committed(job, admission)

    def _send_committed(self, job: Job, admission: turns.Admission) -> Job:
        """After the job's commit: send it (or, waiting its turn, write its ``queued`` event); ``503`` and the
        job ended ``failed`` when neither can be done."""
        if not admission.send:
            return self._announce_waiting(job, admission)
        try:
            self.send(job, self._queued(job, admission))
        except BROKER_ERRORS as exc:
            logger.warning("job_id=%s could not be sent: %s", job.id, exc)
            failed = Ending(JobStatus.FAILED, BrokerUnavailable.code, NOT_QUEUED)
            with self.engine.begin() as conn:  # raising inside would roll the ending back and leave it queued
                ended = repo.finish(conn, job_id=job.id, ending=failed, only_from=(JobStatus.QUEUED,))
            if ended:
                raise BrokerUnavailable(NOT_QUEUED) from exc
            logger.warning("job_id=%s left the queued state meanwhile: the send went through", job.id)
        return job

    def _announce_waiting(self, job: Job, admission: turns.Admission) -> Job:
        """A job committed waiting its turn: its ``queued`` event, written only while its stream is empty, so
        that when an ending sent it first (and told its followers), the late "waiting" event is not written
        after that. Redis away: the job ends ``failed`` unless it was sent meanwhile, and the caller gets ``503``."""
        try:
            self._first_event(
                keys=[stream_key(job.id)],
                args=[
                    EventType.STATUS.value,
                    json.dumps(self._queued(job, admission)),
                    self.events.maxlen,
                    self.events.ttl,
                ],
                client=self.events.client,
            )
        except BROKER_ERRORS as exc:
            logger.warning("job_id=%s not accepted, its events cannot be written: %s", job.id, exc)
            failed = Ending(JobStatus.FAILED, BrokerUnavailable.code, NOT_QUEUED)
            with self.engine.begin() as conn:  # the row locked: no turn can send it meanwhile (turns.take)
                waiting = conn.execute(_STILL_WAITING, {"id": job.id}).first() is not None
                ended = waiting and repo.finish(conn, job_id=job.id, ending=failed, only_from=(JobStatus.QUEUED,))
            if ended:
                raise BrokerUnavailable(NOT_QUEUED) from exc
            logger.warning("job_id=%s was sent by its turn meanwhile: it stands", job.id)
        return job

    @cached_property
    def _first_event(self) -> Script:
        return self.events.client.register_script(_FIRST_EVENT)
