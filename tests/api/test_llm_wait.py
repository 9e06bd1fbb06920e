"""While the embedded LLM is still being built, a chat or summary job is accepted and waits queued, and its
``queued`` event says why; ``/readyz`` shows the LLM's state without failing readiness."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from protostar.runtime.llm_state import LLMState, clear_state, write_state
from tests.api.test_jobs import submit, wait_status
from tests.sse import read_events


@pytest.fixture
def building(client: redis.Redis) -> Iterator[None]:
    write_state(client, LLMState.BUILDING, detail="compiling llama-server: 42%", progress=42, since=time.time(), ttl=60)
    try:
        yield
    finally:
        clear_state(client)


def test_a_chat_job_queued_while_the_llm_builds_says_why_it_waits(api: httpx.Client, building: None) -> None:
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["llm"]["state"] == "building"
    chat_job = submit(api, queue="chat", steps=1)
    ingest_job = submit(api, queue="ingest", steps=1)
    queued = next(e for e in read_events(api, chat_job) if e.event == "status")
    assert queued.data["status"] == "queued" and queued.data["waiting_for"] == "llm"
    assert queued.data["llm"]["progress"] == 42 and "42%" in queued.data["message"]
    other = next(e for e in read_events(api, ingest_job) if e.event == "status")
    assert "waiting_for" not in other.data  # ingestion never waits for the LLM
    wait_status(api, chat_job, "succeeded")
