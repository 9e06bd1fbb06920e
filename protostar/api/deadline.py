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
  complete, storing it gets ``UPLOAD_RATE`` more time per byte). Past it, if a dependency is down or frozen, the
  caller gets ``503 dependency_timeout``, a message that names nothing internal, and the connection is closed.
* Whether one is, a :class:`Monitor` knows: a thread per dependency pings it (PostgreSQL, Redis, the object
  store, by reading a small object's data) every ``PING_EVERY`` seconds, and one whose last answer is older than
  half the deadline (at least 1 s) is taken as down (a frozen one never answers, so its thread just waits). A
  request past its deadline while every dependency answers is slow for another reason (a starved CPU while
  workers start on a small machine, a cold model): it goes on, looked at again after each further deadline,
  rather than being told a dependency is down.
* The abandoned route is left to finish in the background: its thread is blocked in the driver and cannot be
  interrupted, and it finishes when the dependency answers again (or fails by its own timeouts). Whatever it sends
  is dropped, it reads a disconnect, and the request's dependencies (``api.deps``) refuse to start any more work,
  so a route that had not begun its writes never makes them. A write already under way when the deadline passed
  may still commit: the caller was told ``503``, as with any timeout whose outcome is unknown (an upload sent again
  is deduplicated by content and a summary is one in flight per target; a chat message sent again is a second
  message). Requests rarely get that far: a frozen PostgreSQL holds them at their first query.
* Once the response has started (a Server-Sent Events stream, a large download), there is no deadline: the
  response is the caller's to read at its own pace.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from protostar.api.errors import render
from protostar.errors import DependencyTimeout

logger = logging.getLogger(__name__)

ABANDONED = "protostar.abandoned"  # set in the scope of a request answered by the deadline
UPLOAD_RATE = 8 * 1024 * 1024  # bytes per second the API hashes and stores a received body at, at least
PING_EVERY = 0.25  # seconds between a dependency's pings


class Monitor:
    """Pings each dependency from its own thread; :meth:`down` names those without a recent answer."""

    def __init__(self, pings: dict[str, Callable[[], object]], *, stale_after: float) -> None:
        self.pings, self.stale_after = pings, stale_after
        now = time.monotonic()
        self.answered = dict.fromkeys(pings, now)
        self._stop = threading.Event()

    def start(self) -> None:
        for name in self.pings:
            threading.Thread(target=self._watch, args=(name,), name=f"ping-{name}", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def down(self) -> list[str]:
        now = time.monotonic()
        return [name for name, at in self.answered.items() if now - at > self.stale_after]

    def _watch(self, name: str) -> None:
        ping = self.pings[name]
        while not self._stop.wait(PING_EVERY):
            try:
                ping()
            except Exception:  # noqa: BLE001, S112 (a failed ping is the answer: the dependency is down)
                continue
            self.answered[name] = time.monotonic()


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
                    if _dependencies_answer(scope):
                        last_activity = time.monotonic()  # slow, but not waiting on a dead dependency: wait on
                        continue
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


def _dependencies_answer(scope: Scope) -> bool:
    """Whether every dependency answered its latest pings (``True`` when the app keeps no monitor)."""
    state = getattr(getattr(scope.get("app"), "state", None), "protostar", None)
    monitor: Monitor | None = getattr(state, "monitor", None)
    return monitor is None or not monitor.down()


async def _no_body() -> Message:
    return {"type": "http.disconnect"}
