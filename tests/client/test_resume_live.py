"""A chat answer streamed through a connection that breaks, several times, mid-event: the client resumes with
``Last-Event-ID`` and every token arrives exactly once, in the sync client and in its async twin."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from protostar.client import AsyncClient, Client, Retry
from tests.client.proxy import CuttingProxy
from tests.conftest import Live
from tests.sse import read_events

QUESTION = "Write three sentences about rivers."
BUDGET = 450  # bytes of an event stream's answer (headers included) before its connection is cut
CUTS = 4
RETRY = Retry(attempts=5, backoff=0.05, cap=0.2)


def streamed_tokens(api: httpx.Client, job_id: str) -> list[str]:
    """The tokens as a clean, uncut reader sees them."""
    return [str(e.data["text"]) for e in read_events(api, job_id, timeout=180) if e.event == "token"]


@pytest.fixture
def proxy(live: Live) -> CuttingProxy:
    with CuttingProxy(live.api_url, budget=BUDGET, cuts=CUTS) as proxy:
        yield proxy  # type: ignore[misc]


def test_a_cut_stream_resumes_and_every_token_arrives_once(live: Live, api: httpx.Client, proxy: CuttingProxy) -> None:
    with Client(proxy.url, live.admin_key, retry=RETRY) as client:
        session_id = client.sessions.create()
        stream = client.chat(session_id, QUESTION)
        pieces = list(stream)
        answer = stream.answer()
    assert proxy.cut >= 1 and proxy.event_requests == proxy.cut + 1, (proxy.cut, proxy.event_requests)
    assert pieces == streamed_tokens(api, stream.job_id)
    assert "".join(str(p) for p in pieces) == answer.text


def test_the_async_client_resumes_the_same_way(live: Live, api: httpx.Client, proxy: CuttingProxy) -> None:
    async def ask() -> tuple[str, list[str], str]:
        async with AsyncClient(proxy.url, live.admin_key, retry=RETRY) as client:
            session_id = await client.sessions.create()
            stream = await client.chat(session_id, QUESTION)
            pieces = [str(p) async for p in stream]
            return stream.job_id, pieces, (await stream.answer()).text

    job_id, pieces, text = asyncio.run(ask())
    assert proxy.cut >= 1 and proxy.event_requests == proxy.cut + 1
    assert pieces == streamed_tokens(api, job_id)
    assert "".join(pieces) == text
