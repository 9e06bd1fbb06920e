"""The API's request deadline on its own: a route that waits answers 503 at the deadline; a response that has
started (a stream) is never cut off; a route that answers in time is untouched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from protostar.api.deadline import Deadline

TIMEOUT = 0.3


async def _slow(_: Request) -> Response:
    await asyncio.sleep(30)  # a dependency that never answers
    return JSONResponse({"late": True})


async def _quick(_: Request) -> Response:
    return JSONResponse({"ok": True})


async def _stream(_: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        for n in range(5):
            await asyncio.sleep(TIMEOUT)
            yield f"{n}\n".encode()

    return StreamingResponse(body(), media_type="text/plain")


def _client() -> TestClient:
    app = Starlette(routes=[Route("/slow", _slow), Route("/quick", _quick), Route("/stream", _stream)])
    return TestClient(Deadline(app, timeout=TIMEOUT))


def test_a_route_that_waits_answers_503_at_the_deadline() -> None:
    with _client() as client:
        response = client.get("/slow")
    assert response.status_code == 503
    assert response.json() == {
        "error": {
            "code": "dependency_timeout",
            "message": f"a service the API depends on did not answer within {TIMEOUT:g} s; try again shortly",
        }
    }


def test_a_started_stream_is_not_cut_off_and_a_quick_route_is_untouched() -> None:
    with _client() as client:
        assert client.get("/stream").text == "0\n1\n2\n3\n4\n"
        assert client.get("/quick").json() == {"ok": True}
