"""A job's life through HTTP: submit, poll, stream, resume, cancel."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Live, wait_for
from tests.sse import read_events


def submit(api: httpx.Client, **body: object) -> str:
    response = api.post("/v1/probes", json=body)
    assert response.status_code == 202, response.text
    payload = response.json()
    assert payload["status"] == "queued"
    assert payload["events_url"].endswith(f"/v1/jobs/{payload['job_id']}/events")
    return str(payload["job_id"])


def wait_status(api: httpx.Client, job_id: str, *statuses: str, timeout: float = 30) -> dict[str, object]:
    def check() -> dict[str, object] | None:
        job = api.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in statuses else None

    return wait_for(check, timeout=timeout, what=f"job {job_id} to be {statuses}")  # type: ignore[no-any-return]


def test_a_job_runs_to_success_with_progress_and_result(api: httpx.Client) -> None:
    job_id = submit(api, queue="ingest", steps=3, sleep=0.05)
    job = wait_status(api, job_id, "succeeded")
    assert job["kind"] == "probe"
    assert job["progress"] == {"stage": "probe", "done": 3, "total": 3}
    assert job["attempts"] == 1
    assert job["error"] is None
    assert job["result"]["steps"] == 3  # type: ignore[index]
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]  # type: ignore[operator]


def test_events_tell_the_whole_story_in_order(api: httpx.Client) -> None:
    job_id = submit(api, queue="chat", steps=3, sleep=0.05)
    events = list(read_events(api, job_id))
    statuses = [(e.event, e.data["status"]) for e in events if e.event != "progress"]
    assert statuses == [("status", "queued"), ("status", "running"), ("status", "succeeded"), ("done", "succeeded")]
    # Progress is throttled (at most two writes a second), but always reports the first step and the last.
    done = [e.data["done"] for e in events if e.event == "progress"]
    assert done[0] == 1 and done[-1] == 3 and done == sorted(done)
    assert [e.event for e in events].index("progress") == 2
    ids = [tuple(int(p) for p in e.id.split("-")) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_resume_with_last_event_id_has_no_loss_and_no_repeats(api: httpx.Client) -> None:
    job_id = submit(api, queue="chat", steps=6, sleep=0.1)
    first = list(read_events(api, job_id, stop_after=3))
    rest = list(read_events(api, job_id, last_event_id=first[-1].id))
    whole = list(read_events(api, job_id))
    assert [e.id for e in first + rest] == [e.id for e in whole]
    assert whole[-1].event == "done"


def test_a_malformed_last_event_id_is_a_4xx(api: httpx.Client) -> None:
    job_id = submit(api, queue="chat")
    response = api.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "yesterday"})
    assert response.status_code == 422
    assert "Last-Event-ID" in response.json()["error"]["message"]


def test_a_running_job_is_cancelled(api: httpx.Client) -> None:
    job_id = submit(api, queue="chat", steps=200, sleep=0.05)
    wait_status(api, job_id, "running")
    assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    job = wait_status(api, job_id, "cancelled", timeout=5)
    assert job["progress"]["done"] < 200  # type: ignore[index]
    assert [e.event for e in read_events(api, job_id)][-2:] == ["status", "done"]


def test_a_queued_job_is_cancelled_and_never_runs(api: httpx.Client) -> None:
    # Occupy both ingest slots so the third job waits in the queue.
    blockers = [submit(api, queue="ingest", steps=100, sleep=0.05) for _ in range(2)]
    for blocker in blockers:
        wait_status(api, blocker, "running")
    waiting = submit(api, queue="ingest", steps=1)
    response = api.post(f"/v1/jobs/{waiting}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled"
    for blocker in blockers:
        api.post(f"/v1/jobs/{blocker}/cancel")
        wait_status(api, blocker, "cancelled")
    # The message still reaches a worker, which must not run it. A probe sent after it proves it was consumed.
    after = submit(api, queue="ingest", steps=1)
    wait_status(api, after, "succeeded")
    job = api.get(f"/v1/jobs/{waiting}").json()
    assert job["status"] == "cancelled"
    assert job["attempts"] == 0 and job["started_at"] is None
    assert [e.data["status"] for e in read_events(api, waiting) if e.event == "status"] == ["queued", "cancelled"]


def test_cancelling_a_finished_job_changes_nothing(api: httpx.Client) -> None:
    job_id = submit(api, queue="summary")
    wait_status(api, job_id, "succeeded")
    response = api.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "succeeded"


def test_input_errors_fail_at_once_with_their_reason(api: httpx.Client) -> None:
    job_id = submit(api, queue="ingest", fail="input")
    job = wait_status(api, job_id, "failed")
    assert job["attempts"] == 1
    assert job["error"] == {"code": "input_rejected", "message": "the probe was asked to reject its input"}
    events = list(read_events(api, job_id))
    assert [e.event for e in events][-3:] == ["status", "error", "done"]


@pytest.mark.slow
def test_transient_errors_are_retried_with_a_cap(api: httpx.Client, live: Live) -> None:
    job_id = submit(api, queue="summary", fail="transient")
    job = wait_status(api, job_id, "failed", timeout=90)
    assert job["attempts"] == 1  # a delivery that met an unavailable dependency gives its attempt back
    assert job["error"]["code"] == "transient"  # type: ignore[index]
    retries = [e for e in read_events(api, job_id) if e.event == "status" and "retry_in" in e.data]
    assert len(retries) == live.settings.transient_retries


def test_unknown_job_is_404(api: httpx.Client) -> None:
    response = api.get("/v1/jobs/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.slow
def test_a_stream_stays_open_through_a_long_silence(api: httpx.Client) -> None:
    """No event for longer than the relay's blocking read and the Redis client's socket timeout together."""
    job_id = submit(api, queue="chat", steps=1, sleep=25)
    events = list(read_events(api, job_id, timeout=90))
    assert events[-1].event == "done" and events[-1].data["status"] == "succeeded"
