"""Workers under infrastructure faults, on the live stack: a job past its time limit on the thread pool ends
``time_limit``; Redis killed and restarted, or frozen, under running jobs costs no worker and no job.

These tests stop the shared stack's Redis and always bring it back (``finally``), then wait until every queue
runs a probe again, so the tests after them find the stack as it was.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from protostar.constants import JobKind, TaskName
from protostar.jobs import repo
from protostar.jobs.dispatch import Dispatcher
from tests.api.test_jobs import submit, wait_status
from tests.conftest import Live, wait_for

QUEUES = ("ingest", "chat", "summary")


def _workers(live: Live) -> dict[str, int | None]:
    """Each worker's pid: one that exits is restarted by the supervisor under a new pid, so a changed pid is
    a worker that exited."""
    return {name: live.supervisor.pid(name) for name in live.supervisor.names() if name.startswith("worker-")}


def _all_queues_run_a_probe(api: httpx.Client) -> None:
    for queue in QUEUES:
        wait_status(api, submit(api, queue=queue, steps=1), "succeeded", timeout=90)


def test_a_thread_pool_job_past_its_soft_time_limit_fails_with_time_limit(
    api: httpx.Client, engine: Engine, dispatcher: Dispatcher
) -> None:
    """Celery's thread pool ignores time limits; the job's watcher keeps the one its message carries."""
    with Session(engine) as session:
        tenant_id = session.execute(text("SELECT id FROM tenants WHERE name = 'default'")).scalar_one()
        job = repo.create(
            session,
            tenant_id=tenant_id,
            kind=JobKind.PROBE.value,
            task_name=TaskName.PROBE.value,
            queue="chat",
            payload={"steps": 40, "sleep": 0.25, "fail": None},
        )
        session.commit()
        job_id = str(job.id)
    dispatcher.celery.send_task(
        TaskName.PROBE.value,
        kwargs={"job_id": job_id},
        task_id=job_id,
        queue="chat",
        soft_time_limit=1,
        time_limit=30,
        expires=300,
    )
    ended = wait_status(api, job_id, "succeeded", "failed", "cancelled", timeout=30)
    assert ended["status"] == "failed", ended
    assert ended["error"] == {"code": "time_limit", "message": "the job ran past its time limit and was stopped"}
    assert ended["attempts"] == 1  # a time limit is not retried


def test_workers_ride_out_a_redis_kill_and_restart(live: Live, api: httpx.Client) -> None:
    """The thread-pool and prefork workers stay up while Redis is gone, reconnect when it returns, finish the
    jobs they were running and take new ones."""
    redis = live.stack.redis
    assert redis is not None and redis.pid is not None, "the test stack runs an embedded Redis"
    workers = _workers(live)
    running = [submit(api, queue=queue, steps=12, sleep=0.25) for queue in ("ingest", "chat")]
    for job_id in running:
        wait_status(api, job_id, "running", timeout=60)
    os.kill(redis.pid, signal.SIGKILL)
    try:
        time.sleep(2)  # the workers see the broker, their heartbeats' cancel checks and their events fail
        assert _workers(live) == workers, "a worker exited while Redis was down"
    finally:
        redis.stop()  # reaps the killed process
        redis.start()
    wait_for(lambda: _ready(api), timeout=30, what="readiness after Redis returned")
    for job_id in running:
        job = wait_status(api, job_id, "succeeded", "failed", timeout=90)
        assert job["status"] == "succeeded", job
    _all_queues_run_a_probe(api)
    assert _workers(live) == workers, "a worker exited after Redis returned"


def test_a_frozen_redis_does_not_fail_a_running_job(live: Live, api: httpx.Client) -> None:
    """Redis frozen (SIGSTOP) under a running job: its events wait or are skipped, its heartbeat (PostgreSQL)
    goes on, and the job succeeds; before, it failed with "internal: Timeout reading from socket"."""
    redis = live.stack.redis
    assert redis is not None and redis.pid is not None
    job_id = submit(api, queue="chat", steps=16, sleep=0.25)
    wait_status(api, job_id, "running", timeout=60)
    os.kill(redis.pid, signal.SIGSTOP)
    try:
        time.sleep(4)
    finally:
        os.kill(redis.pid, signal.SIGCONT)
    job = wait_status(api, job_id, "succeeded", "failed", timeout=90)
    assert job["status"] == "succeeded", job
    _all_queues_run_a_probe(api)


def _ready(api: httpx.Client) -> bool:
    try:
        return api.get("/readyz").status_code == 200
    except httpx.HTTPError:
        return False


def test_postgresql_restarted_under_a_running_job_retries_it_instead_of_failing(live: Live, api: httpx.Client) -> None:
    """PostgreSQL stops while a job runs: its next write fails, which is transient. The retry cannot be recorded
    either (PostgreSQL is down), so the row stays running; the retry's delivery waits for PostgreSQL, takes the
    job over once its heartbeat is stale, and the job succeeds."""
    postgres = live.stack.postgres
    assert postgres is not None
    job_id = submit(api, queue="chat", steps=24, sleep=0.25)
    wait_for(lambda: (api.get(f"/v1/jobs/{job_id}").json().get("progress") or {}).get("done", 0) >= 2, timeout=60)
    postgres.stop()
    try:
        time.sleep(2)
    finally:
        postgres.start()
    wait_for(lambda: _ready(api), timeout=60, what="readiness after PostgreSQL returned")
    job = wait_status(api, job_id, "succeeded", "failed", timeout=120)
    assert job["status"] == "succeeded", job
    # A retry recorded gives its attempt back (1); one left running for takeover was a delivery lost (2).
    assert job["attempts"] in (1, 2)
    _all_queues_run_a_probe(api)
