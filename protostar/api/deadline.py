"""A deadline at the API's boundary: a request that waits on a dependency answers ``503`` within
``PROTOSTAR_DEPENDENCY_TIMEOUT`` seconds (2 by default) instead of hanging.

Why here and not (only) at each call. Every client has its own deadline where it can have one: PostgreSQL's pool
checkout (``pool_timeout``) and connect (``connect_timeout``), Redis's connect and socket timeouts, the object
store's urllib3 timeouts. None of them covers a dependency that is *frozen* (SIGSTOP, a stalled VM, a full disk)
behind a connection that is already open: the kernel still acknowledges every packet, so TCP keepalives and
``tcp_user_timeout`` never fire, a server-side ``statement_timeout`` never runs, and libpq has no client-side read
timeout; a synchronous psycopg call in a threadpool thread just waits. Cancelling it would need the server too
(PostgreSQL's cancel request goes to the frozen postmaster). Async drivers with cancellation would mean rewriting
every route and the shared synchronous pipeline code for one failure mode. So the boundary keeps the promise:

* The route runs in its own task. Until the response starts, the middleware waits at most the deadline after the
  request began or after the last body chunk arrived (an upload that streams in is not cut off; once its body is
  complete, storing it gets ``UPLOAD_RATE`` more time per byte). Past it the caller gets ``503
  dependency_timeout``, a message that names nothing internal, and the connection is closed.
* The abandoned route is left to finish in the background: its thread is blocked in the driver and cannot be
  interrupted, and it finishes when the dependency answers again (or fails by its own timeouts). Whatever it sends
  is dropped, it reads a disconnect, and the request's dependencies (``api.deps``) refuse to start any more work,
  so a route that had not begun its writes never makes them. A write already under way when the deadline passed
  may still commit: the caller was told ``503``, as with any timeout whose outcome is unknown, and every retried
  submit is safe to repeat (uploads are deduplicated by content, summaries are one in flight per target).
* Once the response has started (a Server-Sent Events stream, a large download), there is no deadline: the
  response is the caller's to read at its own pace.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from protostar.api.errors import render
from protostar.errors import DependencyTimeout

logger = logging.getLogger(__name__)

ABANDONED = "protostar.abandoned"  # set in the scope of a request answered by the deadline
UPLOAD_RATE = 8 * 1024 * 1024  # bytes per second the API hashes and stores a received body at, at least


class Deadline:
    def __init__(self, app: ASGIApp, *, timeout: float) -> None:
        self.app, self.timeout = app, timeout
        self._abandoned: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        last_activity = time.monotonic()
        received = 0
        body_done = False

        async def receiving() -> Message:
            nonlocal last_activity, received, body_done
            if scope.get(ABANDONED):
                return {"type": "http.disconnect"}
            message = await receive()
            last_activity = time.monotonic()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            if scope.get(ABANDONED):
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receiving, sending))
        try:
            while not task.done():
                if started:
                    await asyncio.shield(task)
                    break
                allowed = self.timeout + (received / UPLOAD_RATE if body_done else 0.0)
                remaining = last_activity + allowed - time.monotonic()
                if remaining <= 0:
                    await self._answer(scope, send, task)
                    return
                await asyncio.wait({task}, timeout=min(remaining, self.timeout))
        except asyncio.CancelledError:
            task.cancel()
            raise
        task.result()  # the route's own outcome, its errors included

    async def _answer(self, scope: Scope, send: Send, task: asyncio.Task[None]) -> None:
        scope[ABANDONED] = True
        self._abandoned.add(task)
        task.add_done_callback(self._forget)
        logger.warning(
            "%s %s: no answer within %.1f s (a dependency is slow or down); answered 503",
            scope["method"],
            scope["path"],
            self.timeout,
        )
        error = DependencyTimeout(
            f"a service the API depends on did not answer within {self.timeout:g} s; try again shortly"
        )
        response = render(error)
        response.headers["connection"] = "close"
        response.headers["retry-after"] = "1"
        await response(scope, _no_body, send)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.info("a request answered by the deadline ended later with %r", exc)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}
