"""An unexpected error in a job reaches its caller as a generic message with an error id; the worker's log
line carries the same id and the whole exception (which may hold SQL, object keys, internal URLs)."""

from __future__ import annotations

import logging
import re

import httpx
import pytest
from sqlalchemy import Engine

from protostar.bundle import Clients
from protostar.jobs.broker import create_celery
from protostar.jobs.context import JobContext
from protostar.worker.shell import run_job
from tests.api.leaks import assert_no_internals
from tests.conftest import Live
from tests.jobs.test_reconcile import make_job
from tests.sse import read_events


def test_an_unexpected_error_shows_an_error_id_not_its_text(
    live: Live, engine: Engine, api: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = make_job(engine, queue="chat")
    resources = Clients(live.settings, create_celery(live.settings, role="worker"), role="worker")
    secret = f"SELECT * FROM api_keys -- {live.settings.database_url} tenants/x/sha256/y"

    def broken(ctx: JobContext) -> dict[str, object]:
        raise RuntimeError(secret)

    try:
        with caplog.at_level(logging.ERROR, logger="protostar.worker.shell"), pytest.raises(RuntimeError):
            run_job(None, resources, str(job_id), broken)  # type: ignore[arg-type]  # no retry on this path
    finally:
        resources.close()
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["error"]["code"] == "internal"
    message = job["error"]["message"]
    error_id = re.search(r"error id ([0-9a-f]{12})", message)
    assert error_id, message
    assert_no_internals(message, live.settings)
    events = [e for e in read_events(api, str(job_id)) if e.event == "error"]
    assert events and all(secret not in str(e.data) for e in events)
    logged = [r for r in caplog.records if error_id.group(1) in r.getMessage()]
    assert logged and secret in logged[0].getMessage() and logged[0].exc_info
