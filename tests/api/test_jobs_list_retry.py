"""Jobs a caller can find and retry: ``GET /v1/jobs`` (filters, cursor pages, newest first, the tenant's own)
and ``POST /v1/jobs/{id}/retry`` for a failed or cancelled job (the same id, a new round of attempts)."""

from __future__ import annotations

import uuid

import httpx

from tests.api.test_auth import create_key
from tests.api.test_jobs import submit, wait_status
from tests.conftest import Live
from tests.sse import read_events


def test_jobs_are_listed_newest_first_filtered_and_paged(api: httpx.Client) -> None:
    ids = [submit(api, queue="chat", steps=1) for _ in range(3)]
    failed = submit(api, queue="chat", steps=1, fail="input")
    for job_id in ids:
        wait_status(api, job_id, "succeeded")
    wait_status(api, failed, "failed")

    seen: list[str] = []
    cursor = None
    while True:
        page = api.get("/v1/jobs", params={"kind": "probe", "limit": 2, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        seen += [j["id"] for j in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if not cursor:
            break
    assert seen.index(failed) < seen.index(ids[-1]) < seen.index(ids[0])  # newest first
    assert len(seen) == len(set(seen))  # no page repeats a job

    dead = api.get("/v1/jobs", params={"status": "failed", "kind": "probe", "limit": 100}).json()["items"]
    assert failed in [j["id"] for j in dead] and not set(ids) & {j["id"] for j in dead}
    assert all(j["status"] == "failed" for j in dead)
    assert api.get("/v1/jobs", params={"status": "lost"}).status_code == 422
    assert api.get("/v1/jobs", params={"cursor": "garbage"}).status_code == 422


def test_another_tenant_sees_none_of_these_jobs(live: Live, api: httpx.Client) -> None:
    job_id = submit(api, queue="chat", steps=1)
    with live.client(create_key(f"list-{uuid.uuid4().hex[:8]}")) as other:
        assert job_id not in [j["id"] for j in other.get("/v1/jobs", params={"limit": 100}).json()["items"]]
        assert other.post(f"/v1/jobs/{job_id}/retry").status_code == 404


def test_a_failed_job_is_retried_under_its_id_with_a_new_round_of_attempts(api: httpx.Client) -> None:
    job_id = submit(api, queue="chat", steps=2, fail="input")
    first = wait_status(api, job_id, "failed")
    assert first["attempts"] == 1

    retried = api.post(f"/v1/jobs/{job_id}/retry")
    assert retried.status_code == 202, retried.text
    assert retried.json()["status"] == "queued" and retried.json()["error"] is None
    again = wait_status(api, job_id, "failed")
    assert again["attempts"] == 1 and again["error"]["code"] == "input_rejected"  # type: ignore[index]
    events = [e.event for e in read_events(api, job_id)]
    assert events.count("done") == 1  # the stream holds the new run only

    assert api.post(f"/v1/jobs/{job_id}/retry").status_code == 202  # a failed job may be retried again
    wait_status(api, job_id, "failed")


def test_a_cancelled_job_runs_when_retried_and_other_states_are_refused(api: httpx.Client) -> None:
    job_id = submit(api, queue="chat", steps=200, sleep=0.05)
    wait_status(api, job_id, "running")
    assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    wait_status(api, job_id, "cancelled")
    assert api.post(f"/v1/jobs/{job_id}/retry").status_code == 202
    refused = api.post(f"/v1/jobs/{job_id}/retry")  # queued or running now
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict"
    done = wait_status(api, job_id, "succeeded", timeout=60)
    assert done["progress"] == {"stage": "probe", "done": 200, "total": 200}
    assert api.post(f"/v1/jobs/{job_id}/retry").status_code == 409  # succeeded
    assert api.post(f"/v1/jobs/{uuid.uuid4()}/retry").status_code == 404
