"""Relay a job's Redis Stream to a Server-Sent Events response, through the API process's one relay.

Each SSE ``id`` is the stream entry id, so ``Last-Event-ID`` resumes exactly after the last event the
client saw. A stream first replays what the client missed (non-blocking reads), then follows the job through
:class:`protostar.api.hub.Hub` (one blocking read per process for every stream), dropping by id what it already
sent: no gap, no repeat. The response ends after ``done``. When the stream is gone (expired) or never got its
``done`` (a worker died between recording the end and publishing it), the end is told from the ``jobs`` row.

Limits: a tenant has at most ``PROTOSTAR_TENANT_MAX_STREAMS`` streams open across API processes (``429`` with
``Retry-After`` before any byte, ``protostar.api.leases``). A stream that sent no event for
``PROTOSTAR_STREAM_IDLE_TIMEOUT`` seconds, or has been open ``PROTOSTAR_STREAM_MAX_LIFETIME`` seconds, ends with
a comment and no ``done``; every stream starts with ``retry: 3000``, so an EventSource reconnects after 3 s
with ``Last-Event-ID`` and goes on where it was. While Redis is away a stream sends keep-alives (and looks at the
job row) and resumes from its last id when Redis is back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import anyio
import redis
from anyio import to_thread
from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from protostar.api.hub import OVERFLOW, READ_COUNT, Hub, Subscription
from protostar.api.leases import Lease
from protostar.api.rows import JobRows
from protostar.api.state import AppState
from protostar.auth import Principal
from protostar.constants import JobStatus
from protostar.db.models import Job
from protostar.errors import ValidationFailed
from protostar.jobs import events, repo
from protostar.jobs.ending import final_events

logger = logging.getLogger(__name__)

EVENT_ID = re.compile(r"^\d+-\d+$")
KEEPALIVE = 10.0  # seconds with no event before a keep-alive comment and a look at the job row
RETRY_MS = 3_000  # the reconnection delay an EventSource is told to use
RETRY = f"retry: {RETRY_MS}\n\n".encode()


def format_event(event: events.Event) -> bytes:
    return f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(event.data)}\n\n".encode()


def _synthetic_end(job: Job, after: str) -> list[events.Event]:
    """The closing events of a finished job, told from its row, with ids after every real one: stamped with the
    end's millisecond, or the last id's when a real event came later (the final ``status`` is published just
    after the row records the end), so the client always gets them; the same ids again on a resume."""
    finished = int(job.finished_at.timestamp() * 1000) if job.finished_at else 0
    stamp = max(finished, int(after.partition("-")[0]))
    closing = final_events(JobStatus(job.status), job.error_code, job.error_message)
    out = [events.Event(id=f"{stamp}-{1_000_000 + i}", type=t.value, data=d) for i, (t, d) in enumerate(closing)]
    return [e for e in out if _after(e.id, after)]


def _after(event_id: str, after: str) -> bool:
    a, b = (tuple(int(p) for p in x.split("-")) for x in (event_id, after))
    return a > b


async def _replay(hub: Hub, job_id: uuid.UUID, after: str) -> list[events.Event]:
    """Everything in the stream after ``after`` now, in pages of :data:`READ_COUNT`."""
    out: list[events.Event] = []
    while True:
        page = await hub.replay(job_id, after)
        out += page
        if len(page) < READ_COUNT:
            return out
        after = page[-1].id


class EventStreamResponse(StreamingResponse):
    """A streaming response that runs ``on_close`` however it ends (done, disconnect, cancellation); an async
    ``on_close`` runs shielded, so a disconnect still completes it (the completions route cancels its job there)."""

    def __init__(self, body: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None] | None]) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(body, media_type="text/event-stream", headers=headers)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                closing = self._on_close()
                if closing is not None:
                    await closing


@dataclass
class Relay:
    """One response's stream: replay, join the hub, follow, end (``done``, the row, or a limit). :meth:`items`
    gives the events and the comments to send; :meth:`body` sends them as SSE (the OpenAI-compatible route,
    ``protostar.api.routes.completions``, turns them into completion chunks instead)."""

    hub: Hub
    job_id: uuid.UUID
    after: str
    rows: JobRows
    request: Request
    lease: Lease
    idle: float
    lifetime: float
    sub: Subscription | None = None
    behind: bool = True  # a replay is due: at the start, once more after joining the hub, after an overflow

    async def body(self, job: Job) -> AsyncIterator[bytes]:
        yield RETRY
        async for item in self.items(job):
            yield item if isinstance(item, bytes) else format_event(item)

    async def items(self, job: Job) -> AsyncIterator[events.Event | bytes]:
        """The job's events after ``after`` up to its final ``done``, and comments (keep-alives, a limit reached:
        then it ends without ``done``)."""
        try:
            try:
                gone = JobStatus(job.status).terminal and not await self.hub.exists(self.job_id)
            except (redis.RedisError, OSError):
                gone = False
            if gone:
                for closing in _synthetic_end(job, self.after):
                    yield closing
                return
            async for chunk in self._follow():
                yield chunk
        finally:
            if self.sub is not None:
                self.hub.unsubscribe(self.sub)

    async def _follow(self) -> AsyncIterator[events.Event | bytes]:
        started = last_sent = time.monotonic()
        while True:
            now = time.monotonic()
            wait = min(KEEPALIVE, self.idle - (now - last_sent), self.lifetime - (now - started))
            if wait <= 0:
                reason = "lifetime" if now - started >= self.lifetime else "idle"
                yield f": {reason} limit reached; reconnect with Last-Event-ID\n\n".encode()
                return
            self.lease.touch()
            batch = await self._next_batch(wait)
            if batch is not None:
                for event in batch:
                    if _after(event.id, self.after):  # else replayed already
                        self.after, last_sent = event.id, time.monotonic()
                        yield event
                        if event.final:
                            return
                continue
            if await self.request.is_disconnected():
                return
            current = await self.rows.get(self.job_id)
            if current is None:  # the job is gone (its document was deleted): nothing more will come
                return
            if JobStatus(current.status).terminal:
                async for chunk in self._end(current):
                    yield chunk
                return
            yield b": keep-alive\n\n"

    async def _end(self, job: Job) -> AsyncIterator[events.Event]:
        """The end is recorded: its events may have just come; if not, tell it from the row."""
        try:
            tail = [e for e in await _replay(self.hub, self.job_id, self.after) if _after(e.id, self.after)]
        except (redis.RedisError, OSError):
            tail = []
        for event in tail:
            self.after = event.id
            yield event
            if event.final:
                return
        for closing in _synthetic_end(job, self.after):
            yield closing

    async def _next_batch(self, wait: float) -> list[events.Event] | None:
        """Events to send ([] for none yet), or None after ``wait`` seconds of quiet."""
        if self.behind or self.sub is None:
            try:
                batch = await _replay(self.hub, self.job_id, self.after)
            except (redis.RedisError, OSError) as exc:  # Redis is away: keep-alives until it is back
                logger.debug("event replay failed: %s", type(exc).__name__)
                await asyncio.sleep(wait)
                return None
            if self.sub is None:  # joined after the replay; the next replay gets what the hub read before
                self.sub = self.hub.subscribe(self.job_id, batch[-1].id if batch else self.after)
            else:
                self.behind = False
            return batch
        item = await self.sub.next(wait)
        if item is OVERFLOW:  # this client read too slowly and the hub dropped its events: replay them
            self.behind = True
            return []
        return item if isinstance(item, list) else None


async def event_stream(
    request: Request, state: AppState, principal: Principal, job_id: uuid.UUID, last_event_id: str | None
) -> StreamingResponse:
    after = last_event_id or "0-0"
    if not EVENT_ID.match(after):
        raise ValidationFailed("Last-Event-ID must be an event id like 1700000000000-0")
    hub, leases, rows = state.hub, state.leases, state.job_rows
    if hub is None or leases is None or rows is None:
        raise RuntimeError("the event hub is not running")  # the lifespan starts it before any request

    def load() -> Job:
        with state.sessions() as session:
            return repo.get_for_tenant(session, tenant_id=principal.tenant_id, job_id=job_id)

    job = await to_thread.run_sync(load)  # 404 for another tenant's job, before any byte is sent
    lease = await leases.acquire(principal.tenant_id)  # 429 past the tenant's open streams, before any byte
    try:
        relay = relay_for(request, state, job_id, after, lease)
        return EventStreamResponse(relay.body(job), on_close=lambda: leases.release(lease))
    except BaseException:
        leases.release(lease)
        raise


def relay_for(request: Request, state: AppState, job_id: uuid.UUID, after: str, lease: Lease) -> Relay:
    """A relay of ``job_id``'s events after ``after`` for a response holding ``lease`` (one of its tenant's open
    streams, released by whoever acquired it)."""
    hub, rows = state.hub, state.job_rows
    if hub is None or rows is None:
        raise RuntimeError("the event hub is not running")  # the lifespan starts it before any request
    settings = state.settings
    return Relay(hub, job_id, after, rows, request, lease, settings.stream_idle_timeout, settings.stream_max_lifetime)
