"""Cancel a job: a queued one ends at once, a running one is flagged for its worker."""

from __future__ import annotations

import uuid

import redis
from sqlalchemy.orm import Session

from protostar.constants import JobStatus
from protostar.db.models import Job
from protostar.jobs import repo
from protostar.jobs.ending import Ending
from protostar.jobs.events import EventLog, cancel_key

CANCEL_FLAG_TTL = 24 * 3600


def cancel(session: Session, *, tenant_id: uuid.UUID, job_id: uuid.UUID, client: redis.Redis, events: EventLog) -> Job:
    job, ended = repo.request_cancel(session, tenant_id=tenant_id, job_id=job_id)
    session.commit()
    if ended:
        events.publish_many(job.id, Ending(JobStatus.CANCELLED, job.error_code, job.error_message).events())
    elif job.status == JobStatus.RUNNING:
        client.set(cancel_key(job.id), "1", ex=CANCEL_FLAG_TTL)
    return job
