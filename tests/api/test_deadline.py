"""The API's request deadline on its own: a route that waits while a dependency is down answers 503 at the
deadline; one that is only slow (every dependency answers) goes on; a response that has started (a stream) is
never cut off; a route that answers in time is untouched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from protostar.api.deadline import Deadline, Monitor

TIMEOUT = 0.3


async def _slow(_: Request) -> Response:
    await asyncio.sleep(30)  # a dependency that never answers
    return JSONResponse({"late": True})


async def _busy(_: Request) -> Response:
    await asyncio.sleep(3 * TIMEOUT)  # slow, with every dependency answering
    return JSONResponse({"done": True})


async def _quick(_: Request) -> Response:
    return JSONResponse({"ok": True})


async def _stream(_: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        for n in range(5):
            await asyncio.sleep(TIMEOUT)
            yield f"{n}\n".encode()

    return StreamingResponse(body(), media_type="text/plain")


class _State:
    def __init__(self, *, answering: bool) -> None:
        self.monitor = Monitor({"postgres": lambda: None if answering else 1 / 0}, stale_after=TIMEOUT / 2)
        self.monitor.start()


def _client(*, answering: bool = False) -> TestClient:
    routes = [Route("/slow", _slow), Route("/busy", _busy), Route("/quick", _quick), Route("/stream", _stream)]
    app = Starlette(routes=routes)
    app.state.protostar = _State(answering=answering)
    return TestClient(Deadline(app, timeout=TIMEOUT))


def test_a_route_that_waits_on_a_dependency_that_is_down_answers_503_at_the_deadline() -> None:
    with _client(answering=False) as client:
        response = client.get("/slow")
    assert response.status_code == 503
    assert response.json() == {
        "error": {
            "code": "dependency_timeout",
            "message": f"a service the API depends on did not answer within {TIMEOUT:g} s; try again shortly",
        }
    }


def test_a_slow_route_goes_on_while_every_dependency_answers() -> None:
    with _client(answering=True) as client:
        assert client.get("/busy").json() == {"done": True}


def test_a_started_stream_is_not_cut_off_and_a_quick_route_is_untouched() -> None:
    with _client() as client:
        assert client.get("/stream").text == "0\n1\n2\n3\n4\n"
        assert client.get("/quick").json() == {"ok": True}
