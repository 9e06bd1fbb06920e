"""PostgreSQL restarted under the API: without a ping per checkout (``protostar.db.engine``), the pooled
connections the restart killed are found dead when used. Every request meanwhile and after answers as it should
or ``503`` (the database is unavailable, try again), never ``500``, and the API serves again on its own."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
from sqlalchemy import Engine

from protostar.auth import create_key
from protostar.db.engine import make_sessionmaker
from tests.conftest import Live, wait_for

OK = {200, 202}


def burst(client: httpx.Client, tenant: httpx.Client, n: int = 48) -> list[int]:
    """``n`` requests at once that all need the database: probes submitted (bootstrap key: no key look-up),
    job lists with a tenant's key (looked up in the database when not cached)."""

    def one(i: int) -> int:
        if i % 2:
            return client.post("/v1/probes", json={"queue": "ingest", "steps": 1}).status_code
        return tenant.get("/v1/jobs", params={"limit": 1}).status_code

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, range(n)))


def test_postgresql_restarted_requests_answer_or_503_never_500(live: Live, api: httpx.Client, engine: Engine) -> None:
    postgres = live.stack.postgres
    assert postgres is not None
    with make_sessionmaker(engine).begin() as session:
        key = create_key(session, tenant=f"pg-restart-{uuid.uuid4().hex[:8]}")
    with live.client(key) as tenant:
        assert set(burst(api, tenant)) <= OK  # the API's pool holds connections now
        postgres.stop()
        try:
            during = burst(api, tenant, 8)
        finally:
            postgres.start()
        after = burst(api, tenant)
        assert set(during) <= {503}, during
        assert set(after) <= OK | {503}, after
        wait_for(lambda: set(burst(api, tenant, 16)) <= OK, timeout=30, what="the API to serve again")
    engine.dispose()  # the session's engine held connections the restart killed
