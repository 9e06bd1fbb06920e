"""Jobs: list, state, events (SSE), cancel, retry; and the probe an admin sends to check a queue end to end."""

from __future__ import annotations

import uuid
from datetime import datetime
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from protostar.api.deps import AdminDep, PrincipalDep, SessionDep, StateDep, in_one_hop, in_thread
from protostar.api.schemas import ADMIN_ERRORS, CONFLICT, QUOTA, TOO_MANY_STREAMS, Accepted, JobOut, JobPage, ProbeIn
from protostar.api.sse import event_stream
from protostar.constants import JobKind, JobStatus
from protostar.db.models import Job
from protostar.jobs import repo
from protostar.jobs.cancel import cancel

router = APIRouter(prefix="/v1", tags=["jobs"])


@router.get("/jobs", response_model=JobPage)
def list_jobs(
    principal: PrincipalDep,
    session: SessionDep,
    kind: JobKind | None = None,
    status: JobStatus | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    document_id: uuid.UUID | None = None,
    session_id: uuid.UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> JobPage:
    """Your jobs, newest first, narrowed by kind, status, creation time, document or session; pass
    ``next_cursor`` back as ``cursor`` for the next page. ``status=failed`` is your dead-letter view."""
    where = repo.JobFilter(
        kind=kind.value if kind else None,
        status=status.value if status else None,
        created_after=created_after,
        created_before=created_before,
        document_id=document_id,
        session_id=session_id,
    )
    rows, next_cursor = repo.page(session, tenant_id=principal.tenant_id, where=where, limit=limit, cursor=cursor)
    return JobPage(items=[JobOut.of(j) for j in rows], next_cursor=next_cursor)


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: uuid.UUID, principal: PrincipalDep, session: SessionDep) -> JobOut:
    return JobOut.of(repo.get_for_tenant(session, tenant_id=principal.tenant_id, job_id=job_id))


@router.post("/jobs/{job_id}/cancel", status_code=202, response_model=JobOut)
async def cancel_job(request: Request, job_id: uuid.UUID, principal: PrincipalDep, state: StateDep) -> JobOut:
    """A queued job never runs; a running one stops at its next checkpoint and ends ``cancelled``."""

    def work(session: Session) -> JobOut:
        clients = state.clients
        job = cancel(session, tenant_id=principal.tenant_id, job_id=job_id, client=clients.redis, events=clients.events)
        if job.status == JobStatus.CANCELLED and job.started_at is None:  # ended queued: its slot, if any, is free
            clients.dispatcher.next_turn(tenant_id=principal.tenant_id, queue=job.queue)
        if job.status == JobStatus.CANCELLED:  # ended here (or before): its webhook deliveries, if any are unsent
            clients.dispatcher.send_webhooks(job_id=job.id)
        return JobOut.of(job)

    return await in_one_hop(request, state, work)


@router.post("/jobs/{job_id}/retry", status_code=202, response_model=JobOut, responses={**CONFLICT, **QUOTA})
async def retry_job(request: Request, job_id: uuid.UUID, principal: PrincipalDep, state: StateDep) -> JobOut:
    """Run a ``failed`` or ``cancelled`` job again, under the same id, with a new round of attempts (the work
    is idempotent: one set of chunks, one answer, one summary per range); ``409`` for any other status."""

    def work(session: Session) -> JobOut:
        return JobOut.of(state.clients.dispatcher.retry(session, tenant_id=principal.tenant_id, job_id=job_id))

    return await in_one_hop(request, state, work)


@router.get("/jobs/{job_id}/events", response_class=StreamingResponse, responses=TOO_MANY_STREAMS)
async def job_events(
    job_id: uuid.UUID,
    request: Request,
    principal: PrincipalDep,
    state: StateDep,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
    after: Annotated[
        str | None, Query(max_length=64, description="resume after this event id (as Last-Event-ID)")
    ] = None,
) -> StreamingResponse:
    """Server-Sent Events: ``status``, ``progress``, ``sources`` (chat), ``token``, ``error``, ``done``; resumable
    by id. A stream idle for ``PROTOSTAR_STREAM_IDLE_TIMEOUT`` s or open ``PROTOSTAR_STREAM_MAX_LIFETIME`` s closes
    without ``done``: reconnect with ``Last-Event-ID``. ``429`` past the tenant's ``PROTOSTAR_TENANT_MAX_STREAMS``
    open streams."""
    return await event_stream(request, state, principal, job_id, last_event_id or after)


@router.post("/probes", status_code=202, response_model=Accepted, responses={**ADMIN_ERRORS, **QUOTA})
async def send_probe(request: Request, body: ProbeIn, principal: AdminDep, state: StateDep) -> Accepted:
    """Admin: send a synthetic job to a queue to check it end to end (progress, cancel, events)."""
    # One threadpool hop for the whole submit: its one statement (autocommit), the send and the event.
    submit = partial(
        state.clients.dispatcher.submit,
        None,
        kind=JobKind.PROBE,
        tenant_id=principal.tenant_id,
        payload=body.model_dump(mode="json", exclude={"queue"}),
        queue=body.queue,
    )
    submitted = await in_thread(request, submit)
    return accepted(state, submitted.job)


def events_url(state: StateDep, job_id: uuid.UUID) -> str:
    return f"{state.settings.public_api_url}/v1/jobs/{job_id}/events"


def accepted(state: StateDep, job: Job) -> Accepted:
    """The ``202`` answer for a job just queued (or the one already in flight)."""
    return Accepted(job_id=job.id, status=JobStatus(job.status), events_url=events_url(state, job.id))
