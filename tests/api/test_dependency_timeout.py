"""PostgreSQL frozen (SIGSTOP: its sockets stay open, so no socket or server timeout fires): the API answers
``503 dependency_timeout`` within ``PROTOSTAR_DEPENDENCY_TIMEOUT`` instead of hanging, and recovers after.

The whole server is frozen, the postmaster and every backend, as a stalled host would be; it is always thawed
(``finally``), and the test waits until every queue runs a probe again, so the tests after it find the stack as
it was.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import httpx

from tests.api.leaks import assert_no_internals
from tests.api.test_jobs import submit, wait_status
from tests.conftest import Live, wait_for


def _process_tree(root: int) -> list[int]:
    """``root`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # a backend that ended meanwhile
            os.kill(pid, sig)


def test_frozen_postgresql_answers_503_within_the_deadline_and_recovers(live: Live, api: httpx.Client) -> None:
    postgres = live.stack.postgres
    assert postgres is not None and postgres.pid is not None, "the test stack runs an embedded PostgreSQL"
    deadline = live.settings.dependency_timeout
    api.get("/v1/jobs")  # the key is resolved and cached before the freeze: the route's own query is what waits
    frozen = _process_tree(postgres.pid)
    _signal_all(frozen, signal.SIGSTOP)
    try:
        headers = {"Authorization": f"Bearer {live.admin_key}"}
        with httpx.Client(base_url=live.api_url, headers=headers, timeout=deadline + 10) as client:
            for request in (lambda: client.get("/v1/jobs"), lambda: client.post("/v1/probes", json={"queue": "chat"})):
                response = request()
                assert response.status_code == 503, response.text
                # The boundary's deadline (dependency_timeout), or, when a request needed a new connection, the
                # connect timeout that fired first (database_unavailable, as on a loaded machine): both name the
                # database as the reason, within the deadline.
                assert response.json()["error"]["code"] in ("dependency_timeout", "database_unavailable")
                assert_no_internals(response.text, live.settings)
    finally:
        _signal_all(frozen, signal.SIGCONT)
    wait_for(lambda: _ready(api), timeout=60, what="readiness after PostgreSQL thawed")
    for queue in ("ingest", "chat", "summary"):
        wait_status(api, submit(api, queue=queue, steps=1), "succeeded", timeout=90)


def _ready(api: httpx.Client) -> bool:
    try:
        return api.get("/readyz").status_code == 200
    except httpx.HTTPError:
        return False
