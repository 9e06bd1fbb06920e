"""``api.deps.in_thread``: a route's work runs in one threadpool hop, and not at all for a request the deadline
answered while the work waited for a thread (as a sync dependency refuses to start work then)."""

from __future__ import annotations

import anyio
import pytest
from starlette.requests import Request

from protostar.api.deadline import ABANDONED
from protostar.api.deps import in_thread
from protostar.errors import DependencyTimeout


def request(**scope: object) -> Request:
    return Request({"type": "http", "method": "POST", "path": "/v1/probes", "headers": [], **scope})


def test_the_work_runs_in_a_thread_and_answers() -> None:
    assert anyio.run(in_thread, request(), lambda: 42) == 42


def test_an_abandoned_request_starts_no_work() -> None:
    ran: list[bool] = []
    with pytest.raises(DependencyTimeout):
        anyio.run(in_thread, request(**{ABANDONED: True}), lambda: ran.append(True))
    assert ran == []
