"""Redis stops under a running system: submitting answers 503 fast; when it returns, so does the service."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.api.leaks import assert_no_internals
from tests.api.test_jobs import submit, wait_status
from tests.conftest import Live, wait_for


@pytest.mark.slow
def test_redis_down_is_503_within_2_s_and_the_system_recovers(live: Live, api: httpx.Client) -> None:
    redis = live.stack.redis
    assert redis is not None, "the test stack runs an embedded Redis"
    redis.stop()
    try:
        started = time.monotonic()
        response = api.post("/v1/probes", json={"queue": "chat"})
        elapsed = time.monotonic() - started
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "broker_unavailable"
        assert elapsed < 2.0, f"took {elapsed:.2f} s"
        ready = api.get("/readyz")
        assert ready.status_code == 503
        failed = [c for c in ready.json()["checks"] if not c["ok"]]
        assert failed == [{"name": "redis", "ok": False, "error": "did not answer"}]  # which check, not the exception
        assert_no_internals(ready.text, live.settings)
    finally:
        redis.start()
    wait_for(lambda: api.get("/readyz").status_code == 200, timeout=30, what="readiness after Redis returned")

    def submitted() -> str | None:
        response = api.post("/v1/probes", json={"queue": "chat"})
        return str(response.json()["job_id"]) if response.status_code == 202 else None

    job_id = wait_for(submitted, timeout=30, every=0.5, what="the API to accept work again")
    wait_status(api, job_id, "succeeded", timeout=60)
    for queue in ("ingest", "summary"):
        wait_status(api, submit(api, queue=queue), "succeeded", timeout=60)
