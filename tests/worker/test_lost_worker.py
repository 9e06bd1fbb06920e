"""Workers that die: a thread-pool worker process SIGKILLed mid-job (its message stays in kombu's ``unacked``
for hours) has its job re-queued by the reconciler once the heartbeat is stale and finished by a live worker;
(a worker restarted under the same node name is no owner of it); an input that kills its prefork child on
every delivery ends ``worker_lost`` after ``max_attempts``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import uuid
from typing import Any

import httpx
import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from protostar import commands
from protostar.db.models import Job
from protostar.jobs.dispatch import BROKER_ERRORS, Dispatcher
from tests.api.test_jobs import submit, wait_status
from tests.conftest import LOGS, Live, wait_for
from tests.jobs.test_reconcile import run


def worker_of(engine: Engine, job_id: str) -> tuple[str, str, int] | None:
    with Session(engine) as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        return (job.status, job.worker or "", job.progress_done)


def ping(control: Any, **options: Any) -> list[dict[str, Any]]:
    """The workers' answers, or none when the broadcast's pooled connection was stale (Redis restarted by an
    earlier test: its first use fails, as the reconciler's inspect allows for)."""
    try:
        return list(control.ping(**options) or [])
    except BROKER_ERRORS:
        return []


def test_a_killed_thread_worker_s_job_is_requeued_and_finished_by_a_live_worker(
    live: Live, api: httpx.Client, engine: Engine, client: redis.Redis, dispatcher: Dispatcher
) -> None:
    control = dispatcher.celery.control
    replies = wait_for(lambda: ping(control, timeout=2), timeout=30, what="the live workers to answer")
    others = [n for reply in replies for n in reply if n.startswith("summary@")]
    assert others, "the live summary worker answers"
    node = f"summary-doomed-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    argv = commands.worker(live.settings, "summary")
    argv[argv.index("--hostname") + 1] = node
    with (LOGS / f"doomed-{os.getpid()}.log").open("w") as out:
        doomed = subprocess.Popen(argv, env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: ping(control, destination=[node], timeout=1), timeout=60, what="the second summary worker")
        control.cancel_consumer("summary", destination=others, reply=True)  # the probe goes to the doomed one
        try:
            job_id = submit(api, queue="summary", steps=100, sleep=0.1)
            wait_for(
                lambda: (w := worker_of(engine, job_id)) and w[0] == "running" and w[2] >= 1,
                timeout=30,
                what="the probe to run",
            )
        finally:
            control.add_consumer("summary", destination=others, reply=True)
        status = worker_of(engine, job_id)
        assert status is not None and status[1].endswith(f":{doomed.pid}")
        dead = doomed.pid
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)
        # Restarted under the same node name, as `protostar up` restarts a worker: not mistaken for the owner.
        with (LOGS / f"doomed-{os.getpid()}.log").open("a") as out:
            doomed = subprocess.Popen(argv, env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: ping(control, destination=[node], timeout=1), timeout=60, what="the restarted worker")

        # What beat does every reconcile_interval: the heartbeat goes stale, the job is re-queued and sent.
        wait_for(lambda: run(engine, client, dispatcher)["requeued_silent"] >= 1, timeout=60, every=0.5)
        job = wait_status(api, job_id, "succeeded", timeout=60)
        assert job["attempts"] == 2
        assert isinstance(job["result"], dict) and not job["result"]["worker"].endswith(f":{dead}")
    finally:
        if doomed.poll() is None:
            doomed.terminate()
            doomed.wait(timeout=20)


def test_an_input_that_kills_its_child_every_time_fails_worker_lost_after_max_attempts(
    live: Live, api: httpx.Client
) -> None:
    job_id = submit(api, queue="ingest", steps=1, fail="crash")
    job = wait_status(api, job_id, "failed", "succeeded", timeout=150)
    assert job["status"] == "failed"
    assert job["attempts"] == live.settings.max_attempts  # every delivery counted, none past the limit
    error = job["error"]
    assert isinstance(error, dict) and error["code"] == "worker_lost"
    assert "kept dying" in error["message"]


def test_the_probe_crashes_only_a_prefork_child(api: httpx.Client) -> None:
    job = wait_status(api, submit(api, queue="chat", steps=1, fail="crash"), "failed", "succeeded", timeout=30)
    error = job["error"]
    assert isinstance(error, dict) and error["code"] == "input_rejected"
