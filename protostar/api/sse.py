"""Relay a job's Redis Stream to a Server-Sent Events response.

Each SSE ``id`` is the stream entry id, so ``Last-Event-ID`` resumes exactly after the last event the
client saw. The response ends after ``done``. When the stream is gone (expired) or never got its ``done``
(a worker died between recording the end and publishing it), the end is told from the ``jobs`` row.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import AsyncIterator

from anyio import to_thread
from fastapi import Request
from fastapi.responses import StreamingResponse

from protostar.api.state import AppState
from protostar.auth import Principal
from protostar.constants import JobStatus
from protostar.db.models import Job
from protostar.errors import ValidationFailed
from protostar.jobs import events, repo
from protostar.jobs.ending import final_events

logger = logging.getLogger(__name__)

EVENT_ID = re.compile(r"^\d+-\d+$")
IDLE_MS = 10_000  # a keep-alive comment and a look at the job row after this long with no event


def format_event(event: events.Event) -> bytes:
    return f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(event.data)}\n\n".encode()


def _synthetic_end(job: Job, after: str) -> list[events.Event]:
    """The closing events of a finished job, told from its row, with ids after every real one."""
    stamp = int(job.finished_at.timestamp() * 1000) if job.finished_at else 0
    closing = final_events(JobStatus(job.status), job.error_code, job.error_message)
    out = [events.Event(id=f"{stamp}-{1_000_000 + i}", type=t.value, data=d) for i, (t, d) in enumerate(closing)]
    return [e for e in out if _after(e.id, after)]


def _after(event_id: str, after: str) -> bool:
    a, b = (tuple(int(p) for p in x.split("-")) for x in (event_id, after))
    return a > b


async def event_stream(
    request: Request, state: AppState, principal: Principal, job_id: uuid.UUID, last_event_id: str | None
) -> StreamingResponse:
    after = last_event_id or "0-0"
    if not EVENT_ID.match(after):
        raise ValidationFailed("Last-Event-ID must be an event id like 1700000000000-0")

    def load() -> Job:
        with state.sessions() as session:
            return repo.get_for_tenant(session, tenant_id=principal.tenant_id, job_id=job_id)

    job = await to_thread.run_sync(load)  # 404 for another tenant's job, before any byte is sent

    async def body() -> AsyncIterator[bytes]:
        nonlocal after
        if JobStatus(job.status).terminal and not await events.exists(state.clients.aredis, job_id):
            for closing in _synthetic_end(job, after):
                yield format_event(closing)
            return
        async for event in events.follow(state.clients.aredis, job_id, after=after, block_ms=IDLE_MS):
            if event is not None:
                after = event.id
                yield format_event(event)
                continue
            if await request.is_disconnected():
                return
            current = await to_thread.run_sync(load)
            if JobStatus(current.status).terminal:
                # The end is recorded but its events never came: tell it from the row.
                for closing in _synthetic_end(current, after):
                    yield format_event(closing)
                return
            yield b": keep-alive\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)
