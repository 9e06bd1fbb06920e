"""Response and request bodies of the public contract."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from protostar.constants import PROBE_QUEUES, JobStatus, Queue
from protostar.db.models import Job


class Progress(BaseModel):
    stage: str | None
    done: int
    total: int | None


class JobError(BaseModel):
    code: str
    message: str | None


class JobOut(BaseModel):
    id: uuid.UUID
    kind: str
    status: JobStatus
    progress: Progress
    result: dict[str, Any] | None
    error: JobError | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> JobOut:
        return cls(
            id=job.id,
            kind=job.kind,
            status=JobStatus(job.status),
            progress=Progress(stage=job.stage, done=job.progress_done, total=job.progress_total),
            result=job.result,
            error=JobError(code=job.error_code, message=job.error_message) if job.error_code else None,
            attempts=job.attempts,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


class Accepted(BaseModel):
    job_id: uuid.UUID
    status: JobStatus
    events_url: str


class ProbeIn(BaseModel):
    queue: Queue = Field(Queue.INGEST, description="one of " + ", ".join(q.value for q in PROBE_QUEUES))
    steps: int = Field(3, ge=1, le=10_000)
    sleep: float = Field(0.0, ge=0, le=60)
    fail: str | None = Field(None, pattern="^(input|transient)$")
