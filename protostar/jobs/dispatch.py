"""Commit the row, then send the task: the one path by which work enters a queue.

``submit(kind, …)`` reads the job-kind table for the task, the queue and whether one job may be in flight per
target. If the broker cannot take the message, the row decides what happened: still ``queued`` means nothing
was sent, so the job ends ``failed`` and the caller gets ``503``; anything else means a worker already has the
message (the send went through and only its reply was late), so the job stands.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from protostar.constants import EventType, JobKind, JobStatus, Queue
from protostar.db.models import Job
from protostar.errors import BrokerUnavailable, Conflict, ValidationFailed
from protostar.jobs import repo
from protostar.jobs.ending import Ending
from protostar.jobs.events import EventLog, cancel_key, stream_key
from protostar.jobs.kinds import KINDS, PROBE_QUEUES, send_options
from protostar.runtime.llm_state import waiting_note
from protostar.settings import Settings

logger = logging.getLogger(__name__)

BROKER_ERRORS = (OperationalError, redis.RedisError, OSError)
NOT_QUEUED = "the task queue is unavailable; nothing was queued, try again"

# Partial unique indexes on ``jobs`` that allow one job in flight per key (see protostar.db.models.Job).
IN_FLIGHT_INDEXES = frozenset({"uq_jobs_summary_session_in_flight", "uq_jobs_summary_document_in_flight"})


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

    def send(self, job: Job) -> None:
        """Send ``job``'s task; the task id is the job id, so a second send is harmless."""
        self.celery.send_task(
            job.task_name,
            kwargs={"job_id": str(job.id)},
            task_id=str(job.id),
            queue=job.queue,
            retry=False,
            ignore_result=True,  # results live in the jobs table: no result-channel subscription per send
            **send_options(self.settings, job.queue),
        )

    def submit(
        self,
        session: Session,
        *,
        kind: JobKind,
        tenant_id: uuid.UUID,
        payload: dict[str, Any],
        job_id: uuid.UUID | None = None,
        queue: Queue | None = None,
    ) -> Submitted:
        """Commit the job (with whatever else ``session`` holds), then send it. For a kind with one job in flight
        per target, the job already queued or running for that target is the answer (``created=False``)."""
        spec = KINDS[kind]
        target_queue = spec.queue or queue
        if target_queue is None or (spec.queue is None and target_queue not in PROBE_QUEUES):
            raise ValidationFailed(f"queue must be one of {', '.join(q.value for q in PROBE_QUEUES)}")

        def create() -> Job:
            return repo.create(
                session,
                tenant_id=tenant_id,
                kind=kind.value,
                task_name=spec.task.value,
                queue=target_queue.value,
                payload=payload,
                job_id=job_id,
            )

        if spec.one_in_flight is None:
            job = create()
            return Submitted(self._commit_and_send(session, job), created=True)
        key = spec.one_in_flight
        for _ in range(3):  # the job in flight may end between our insert and our look-up: then insert again
            try:
                with session.begin_nested():
                    job = create()
            except IntegrityError as exc:
                if getattr(getattr(exc.orig, "diag", None), "constraint_name", None) not in IN_FLIGHT_INDEXES:
                    raise
                session.commit()  # whatever else the session holds
                existing = repo.in_flight(session, kind=kind.value, key=key, value=str(payload[key]))
                if existing is not None:
                    return Submitted(existing, created=False)
                continue
            return Submitted(self._commit_and_send(session, job), created=True)
        raise AssertionError(f"no {kind.value} job for {payload[key]} after three tries")  # pragma: no cover

    def retry(self, session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Job:
        """Run a ``failed`` or ``cancelled`` job again under the same id: its row back to ``queued`` with a new
        round of attempts, its old events and cancel flag cleared (a follower sees only the new run), then sent."""
        try:
            job = repo.reopen(session, tenant_id=tenant_id, job_id=job_id)
            session.flush()
        except IntegrityError as exc:  # one of its kind is in flight for the same target (summaries)
            session.rollback()
            raise Conflict(f"a job like {job_id} is queued or running already; follow that one") from exc
        self.events.client.delete(stream_key(job.id), cancel_key(job.id))
        return self._commit_and_send(session, job)

    def _queued(self, job: Job) -> dict[str, Any]:
        """The ``queued`` event; for a job that needs the embedded LLM while it is still being built, why it waits."""
        data: dict[str, Any] = {"status": JobStatus.QUEUED.value}
        if job.queue in (Queue.CHAT.value, Queue.SUMMARY.value):
            data.update(waiting_note(self.events.client) or {})
        return data

    def _commit_and_send(self, session: Session, job: Job) -> Job:
        session.commit()
        try:
            self.send(job)
            self.events.publish(job.id, EventType.STATUS, self._queued(job))
        except BROKER_ERRORS as exc:
            logger.warning("job_id=%s could not be sent: %s", job.id, exc)
            failed = Ending(JobStatus.FAILED, BrokerUnavailable.code, NOT_QUEUED)
            with self.engine.begin() as conn:  # raising inside would roll the ending back and leave it queued
                ended = repo.finish(conn, job_id=job.id, ending=failed, only_from=(JobStatus.QUEUED,))
            if ended:
                raise BrokerUnavailable(NOT_QUEUED) from exc
            logger.warning("job_id=%s left the queued state meanwhile: the send went through", job.id)
            return job
        repo.mark_dispatched(self.engine, job_id=job.id)
        return job
