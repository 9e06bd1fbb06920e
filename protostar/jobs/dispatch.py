"""Commit the row, then send the task: the one path by which work enters a queue."""

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

from protostar.constants import EventType, JobStatus, Queue
from protostar.db.models import Job
from protostar.errors import BrokerUnavailable
from protostar.jobs import repo
from protostar.jobs.events import EventLog
from protostar.settings import Settings

logger = logging.getLogger(__name__)

BROKER_ERRORS = (OperationalError, redis.RedisError, OSError)

# Partial unique indexes on ``jobs`` that allow one job in flight per key (see protostar.db.models.Job).
IN_FLIGHT_INDEXES = frozenset({"uq_jobs_summary_session_in_flight", "uq_jobs_summary_document_in_flight"})


def time_limits(settings: Settings, queue: str) -> dict[str, int]:
    limits = {
        Queue.INGEST.value: (settings.ingest_soft_time_limit, settings.ingest_time_limit),
        Queue.CHAT.value: (settings.chat_soft_time_limit, settings.chat_time_limit),
        Queue.SUMMARY.value: (settings.summary_soft_time_limit, settings.summary_time_limit),
    }
    soft, hard = limits.get(queue, (60, 90))
    return {"soft_time_limit": soft, "time_limit": hard}


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
            expires=self.settings.task_expires,
            retry=False,
            ignore_result=True,  # results live in the jobs table: no result-channel subscription per send
            **time_limits(self.settings, job.queue),
        )

    def submit(
        self,
        session: Session,
        *,
        tenant_id: uuid.UUID,
        kind: str,
        task_name: str,
        queue: str,
        payload: dict[str, Any],
        job_id: uuid.UUID | None = None,
    ) -> Job:
        """Commit the job (with whatever else ``session`` holds), then send it."""
        job = repo.create(
            session, tenant_id=tenant_id, kind=kind, task_name=task_name, queue=queue, payload=payload, job_id=job_id
        )
        return self._commit_and_send(session, job)

    def submit_unique(
        self,
        session: Session,
        *,
        tenant_id: uuid.UUID,
        kind: str,
        task_name: str,
        queue: str,
        payload: dict[str, Any],
    ) -> Job | None:
        """Like :meth:`submit`, but ``None`` when an equal job is already queued or running: one of the
        ``IN_FLIGHT_INDEXES`` refused the row, so concurrent callers never queue two."""
        try:
            with session.begin_nested():
                job = repo.create(
                    session, tenant_id=tenant_id, kind=kind, task_name=task_name, queue=queue, payload=payload
                )
        except IntegrityError as exc:
            if getattr(getattr(exc.orig, "diag", None), "constraint_name", None) not in IN_FLIGHT_INDEXES:
                raise
            session.commit()  # whatever else the session holds
            return None
        return self._commit_and_send(session, job)

    def _commit_and_send(self, session: Session, job: Job) -> Job:
        session.commit()
        try:
            self.send(job)
            self.events.publish(job.id, EventType.STATUS, {"status": JobStatus.QUEUED.value})
        except BROKER_ERRORS as exc:
            logger.warning("job_id=%s could not be sent: %s", job.id, exc)
            repo.fail_queued(session, job_id=job.id, code=BrokerUnavailable.code, message=str(exc))
            session.commit()
            raise BrokerUnavailable("the task queue is unavailable; nothing was queued, try again") from exc
        repo.mark_dispatched(self.engine, job_id=job.id)
        return job
