"""A tenant over its LLM limits does not hold worker threads while it waits: its jobs that find no turn go back
to their queue (``LLMBusy``) and come again later, while the threads serve other tenants. On the live stack and
the real local model, with one tenant limited to a single LLM call in flight."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest
import redis
from sqlalchemy import Engine, text

from protostar.llm.limits import Limits, LLMLimiter
from tests.api.test_auth import create_key
from tests.api.test_jobs import submit, wait_status
from tests.chat.test_chat_api import ask, new_session
from tests.conftest import Live, wait_for
from tests.sse import read_events

BURST = 12  # above the test stack's 8 chat threads: some of the burst waits in the queue, ahead of the probe


@pytest.fixture
def limited(live: Live, engine: Engine, client: redis.Redis) -> Iterator[str]:
    """A new tenant allowed one LLM call in flight at a time; its API key."""
    key = create_key(f"llm-turns-{uuid.uuid4().hex[:8]}")
    with live.client(key) as api:
        session_id = new_session(api)
    with engine.connect() as conn:
        tenant = conn.execute(text("SELECT tenant_id FROM sessions WHERE id = :id"), {"id": session_id}).scalar_one()
    limiter = LLMLimiter(client, Limits(1, 1, 1, 1, wait_timeout=0, lease=1))  # only to set the tenant's limits
    limiter.set_tenant_limits(tenant, concurrency=1, rpm=None)
    try:
        yield key
    finally:
        limiter.set_tenant_limits(tenant, concurrency=None, rpm=None)


def test_a_burst_over_the_tenants_llm_limit_leaves_threads_for_others_and_every_job_succeeds(
    live: Live, api: httpx.Client, limited: str
) -> None:
    with live.client(limited) as tenant:
        burst = [ask(tenant, new_session(tenant), f"Question {n}: name a colour.")["job_id"] for n in range(BURST)]

        # Another tenant's work gets a chat thread within seconds, while the burst is still waiting for turns.
        probe = submit(api, queue="chat", steps=1)
        wait_status(api, probe, "succeeded", timeout=20)
        other = ask(api, new_session(api), "Say hello.")["job_id"]

        # A job of the burst cancelled while it waits for a turn ends cancelled.
        waiting = wait_for(lambda: _waiting_for_a_turn(tenant, burst), timeout=60, what="a job waiting for a turn")
        assert tenant.post(f"/v1/jobs/{waiting}/cancel").status_code == 202
        wait_status(tenant, waiting, "cancelled", timeout=30)

        # The other tenant's question started before the burst was over (it did not wait for the whole burst).
        started = datetime.fromisoformat(wait_status(api, other, "succeeded", timeout=120)["started_at"])
        ends = [tenant.get(f"/v1/jobs/{job_id}").json()["finished_at"] for job_id in burst if job_id != waiting]
        assert any(end is None or datetime.fromisoformat(end) > started for end in ends), "it waited for the burst"

        # Every other job of the burst ends succeeded, on its first attempt: the waits used up no attempts.
        for job_id in burst:
            if job_id == waiting:
                continue
            job = wait_status(tenant, job_id, "succeeded", "failed", "cancelled", timeout=600)
            assert job["status"] == "succeeded", job
            assert job["attempts"] == 1, job
        waits = [
            e.data
            for job_id in burst
            for e in read_events(tenant, job_id)
            if e.event == "status" and "retry_in" in e.data
        ]
    assert waits, "no job of the burst waited for a turn"
    assert all(w["status"] == "queued" and w["retry_in"] > 0 for w in waits)
    assert {w["reason"] for w in waits} == {"waiting for a turn at the LLM (limit: calls in flight, this tenant)"}


def _waiting_for_a_turn(api: httpx.Client, job_ids: list[str]) -> str | None:
    for job_id in reversed(job_ids):  # the last ones wait longest
        job = api.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "queued" and job["progress"]["stage"] == "waiting_for_llm":
            return job_id
    return None
