"""A worker child killed mid-job: the message is redelivered and the job still ends once, succeeded."""

from __future__ import annotations

import os
import signal
import uuid

import httpx
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from protostar.db.models import Job
from tests.api.test_jobs import submit, wait_status
from tests.conftest import wait_for
from tests.sse import read_events


def running_pid(engine: Engine, job_id: str) -> int:
    def pid() -> int | None:
        with Session(engine) as session:
            job = session.get(Job, uuid.UUID(job_id))
            if job is None or job.status != "running" or job.progress_done < 2 or not job.worker:
                return None
            return int(job.worker.rsplit(":", 1)[1])

    return wait_for(pid, timeout=30, what=f"job {job_id} to be running")  # type: ignore[no-any-return]


def test_sigkill_of_the_worker_child_still_ends_once(api: httpx.Client, engine: Engine) -> None:
    job_id = submit(api, queue="ingest", steps=30, sleep=0.1)
    os.kill(running_pid(engine, job_id), signal.SIGKILL)
    job = wait_status(api, job_id, "succeeded", timeout=60)
    assert job["attempts"] == 2
    assert job["progress"]["done"] == 30  # type: ignore[index]
    events = list(read_events(api, job_id))
    assert [e.event for e in events].count("done") == 1
    running = [e.data["attempt"] for e in events if e.event == "status" and e.data["status"] == "running"]
    assert running == [1, 2]
