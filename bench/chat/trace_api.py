"""Protostar's API, unchanged, with a timestamp at each hop of ``POST /v1/sessions/{id}/messages`` and of the
SSE relay: ``uvicorn bench.chat.trace_api:create_app --factory`` (the argv of ``commands.api``).

Wraps, at import, the functions the message route and the event stream pass through, noting ``time.time()``
in this process's memory; ``GET /bench/trace`` hands the notes over (and forgets them). Stamps per job:
``route`` (the route's work starts in its thread: key checked, ``chat.submit.ask`` called), ``submit`` (the
question's one statement is next: session check, message and job rows), ``send`` / ``sent`` (``send_task``),
``submitted`` (the ``queued`` event written: the route returns), ``follow`` (the SSE relay starts: replay,
then the hub) and ``tokens`` (each ``token`` event as it comes off XREAD, before it is written to the socket).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from protostar.api.app import create_app as protostar_app
from protostar.api.routes import sessions as session_routes
from protostar.api.sse import Relay
from protostar.jobs import events
from protostar.jobs.dispatch import Dispatcher

_traces: dict[str, dict[str, Any]] = {}
_local = threading.local()


def _install() -> None:
    ask = session_routes.ask

    @functools.wraps(ask)
    def timed_ask(*args: Any, **kwargs: Any) -> Any:
        _local.stamps = {"route": time.time()}
        return ask(*args, **kwargs)

    session_routes.ask = timed_ask

    submit = Dispatcher.submit

    @functools.wraps(submit)
    def timed_submit(self: Dispatcher, *args: Any, **kwargs: Any) -> Any:
        stamps = getattr(_local, "stamps", None) or {}
        _local.stamps = stamps
        stamps["submit"] = time.time()
        submitted = submit(self, *args, **kwargs)
        stamps["submitted"] = time.time()
        job = getattr(submitted, "job", submitted)  # a ``Submitted`` (job, created), or the job itself
        _traces.setdefault(str(job.id), {}).update(stamps)
        _local.stamps = None
        return submitted

    Dispatcher.submit = timed_submit  # type: ignore[method-assign]

    send = Dispatcher.send

    @functools.wraps(send)
    def timed_send(self: Dispatcher, job: Any, status: dict[str, Any] | None = None) -> None:
        stamps = getattr(_local, "stamps", None)
        if stamps is not None:
            stamps["send"] = time.time()
        send(self, job, status)
        if stamps is not None:
            stamps["sent"] = time.time()

    Dispatcher.send = timed_send  # type: ignore[method-assign]

    items = Relay.items

    async def timed_items(self: Relay, job: Any) -> AsyncIterator[events.Event | bytes]:
        trace = _traces.setdefault(str(self.job_id), {})
        trace.setdefault("follow", time.time())
        tokens: list[float] = trace.setdefault("tokens", [])
        async for item in items(self, job):
            if isinstance(item, events.Event) and item.type == "token":
                tokens.append(time.time())
            yield item

    Relay.items = timed_items  # type: ignore[method-assign]


def create_app() -> FastAPI:
    app = protostar_app()

    @app.get("/bench/trace", include_in_schema=False)
    def take_traces() -> dict[str, dict[str, Any]]:
        taken = dict(_traces)
        for job_id in taken:
            _traces.pop(job_id, None)
        return taken

    return app


_install()
