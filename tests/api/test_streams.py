"""Event streams at scale and under limits, on the live stack: 1,000 followers on one API process through its one
relay (``protostar.api.hub``), the per-tenant cap (429 + Retry-After, counted across API processes), and the idle
end that a client resumes from with ``Last-Event-ID`` (no loss, no repeats)."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis
from sqlalchemy import Engine

from protostar import commands
from protostar.auth import create_key
from protostar.db.engine import make_sessionmaker
from protostar.jobs.events import stream_key
from protostar.runtime.process import free_port
from tests.api.test_jobs import submit, wait_status
from tests.conftest import Live, wait_for
from tests.sse import Followed, follow

FOLLOWERS = 1000
TENANTS = 20  # 50 followers each: under the default cap of 100 streams per tenant
JOBS_PER_TENANT = 2  # 25 followers per job
CAP = 3  # PROTOSTAR_TENANT_MAX_STREAMS of the second API process
IDLE = 2  # PROTOSTAR_STREAM_IDLE_TIMEOUT of the second API process, seconds


def admin_keys(engine: Engine, prefix: str, count: int) -> list[str]:
    """Admin keys of new tenants (admins may send probes, whose events these tests follow)."""
    run = secrets.token_hex(3)
    with make_sessionmaker(engine).begin() as session:
        return [create_key(session, tenant=f"{prefix}-{run}-{i}", admin=True) for i in range(count)]


def stored_ids(client: redis.Redis, job_id: str) -> list[str]:
    return [entry_id.decode() for entry_id, _ in client.xrange(stream_key(job_id))]


def test_a_thousand_followers_on_one_api_process(
    live: Live, api: httpx.Client, engine: Engine, client: redis.Redis
) -> None:
    # Every chat thread held by a gate, so the jobs start only once all followers are connected.
    gates = [submit(api, queue="chat", steps=1, sleep=60) for _ in range(live.settings.chat_concurrency)]
    keys = admin_keys(engine, "followers", TENANTS)
    jobs: list[tuple[str, str]] = []  # (key, job id)
    for key in keys:
        with live.client(key) as tenant:
            jobs += [(key, submit(tenant, queue="chat", steps=3, sleep=0.1)) for _ in range(JOBS_PER_TENANT)]
    per_job = FOLLOWERS // len(jobs)

    async def run() -> list[tuple[str, Followed]]:
        opened = [asyncio.Event() for _ in range(FOLLOWERS)]
        tasks = [
            asyncio.create_task(follow(live.api_url, job, key, opened=opened[n * per_job + i]))
            for n, (key, job) in enumerate(jobs)
            for i in range(per_job)
        ]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in opened)), timeout=120)
        for gate in gates:  # all 1,000 are open at once here: let the jobs run
            api.post(f"/v1/jobs/{gate}/cancel")
        results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
        return [(job, results[n * per_job + i]) for n, (_, job) in enumerate(jobs) for i in range(per_job)]

    followed = asyncio.run(run())
    assert len(followed) == FOLLOWERS
    for job_id, got in followed:
        assert got.status == 200
        assert got.ended and got.types[-1] == "done", got.types
        assert got.ids == stored_ids(client, job_id)  # every event, in order, once
        assert got.retry == "3000"
    for gate in gates:
        wait_status(api, gate, "cancelled", "succeeded", timeout=60)


@pytest.fixture(scope="module")
def second_api(live: Live) -> Iterator[str]:
    """Another API process on the same stack, with a small stream cap and idle time."""
    port = free_port()
    settings = live.settings.model_copy(update={"api_port": port})
    env = {
        "PROTOSTAR_API_PORT": str(port),
        "PROTOSTAR_TENANT_MAX_STREAMS": str(CAP),
        "PROTOSTAR_STREAM_IDLE_TIMEOUT": str(IDLE),
    }
    live.supervisor.start("api-streams", commands.api(settings), extra_env=env)
    url = settings.public_api_url

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, timeout=120, what=f"the second API (log: {live.log})")
        yield url
    finally:
        live.supervisor.stop("api-streams")


def test_the_tenant_stream_cap_answers_429_across_api_processes(
    live: Live, second_api: str, engine: Engine, client: redis.Redis
) -> None:
    (key,) = admin_keys(engine, "capped", 1)
    with live.client(key) as tenant:
        job_id = submit(tenant, queue="chat", steps=200, sleep=0.25)  # an event every 0.25 s: never idle
    path = f"/v1/jobs/{job_id}/events"
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(headers=headers, timeout=30) as http:
        # Two streams on the main API, one on the second: the second's cap of 3 counts all of them.
        opened = [
            http.stream("GET", live.api_url + path),
            http.stream("GET", live.api_url + path),
            http.stream("GET", second_api + path),
        ]
        responses = [s.__enter__() for s in opened]
        try:
            assert [r.status_code for r in responses] == [200, 200, 200]
            refused = http.get(second_api + path)
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "too_many_requests"
            assert int(refused.headers["Retry-After"]) > 0
        finally:
            for stream in opened:
                stream.__exit__(None, None, None)
        # Closed streams give their slots back.
        leases = f"protostar:streams:{_tenant_of(engine, job_id)}"
        wait_for(lambda: client.zcard(leases) == 0, timeout=30, what="the leases to be released")
        with http.stream("GET", second_api + path) as again:
            assert again.status_code == 200
        http.post(live.api_url + f"/v1/jobs/{job_id}/cancel")


def _tenant_of(engine: Engine, job_id: str) -> uuid.UUID:
    from protostar.db.models import Job

    with make_sessionmaker(engine)() as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        return job.tenant_id


def test_an_idle_stream_ends_and_resumes_from_last_event_id(
    live: Live, second_api: str, engine: Engine, client: redis.Redis
) -> None:
    (key,) = admin_keys(engine, "idle", 1)
    with live.client(key) as tenant:
        # Quiet for longer than the idle time between its steps.
        job_id = submit(tenant, queue="chat", steps=3, sleep=IDLE * 2.5)

    async def run() -> list[Followed]:
        parts: list[Followed] = []
        after = ""
        while not parts or parts[-1].types[-1:] != ["done"]:
            assert len(parts) < 20, [p.types for p in parts]
            part = await follow(second_api, job_id, key, after=after)
            assert part.status == 200 and part.ended
            parts.append(part)
            after = part.ids[-1] if part.ids else after
        return parts

    parts = asyncio.run(run())
    ended_idle = [p for p in parts if any("idle limit reached" in c for c in p.comments)]
    assert ended_idle, [p.comments for p in parts]
    assert all(p.types[-1:] != ["done"] for p in ended_idle)
    resumed = [i for p in parts for i in p.ids]
    assert resumed == stored_ids(client, job_id)  # no loss, no repeats across the resumes


def test_a_stream_without_its_done_is_ended_from_the_job_row(
    live: Live, api: httpx.Client, second_api: str, client: redis.Redis
) -> None:
    job_id = submit(api, queue="chat", steps=1)
    wait_status(api, job_id, "succeeded")
    *kept, (done_id, _) = client.xrange(stream_key(job_id))
    client.xdel(stream_key(job_id), done_id)  # as if the worker died between recording the end and publishing it

    got = asyncio.run(follow(second_api, job_id, live.admin_key))  # quiet for the idle time: it looks at the row
    assert got.ended and got.types[-1] == "done"
    assert got.ids[: len(kept)] == [entry_id.decode() for entry_id, _ in kept]
    assert done_id.decode() not in got.ids  # the end told from the row, with its own ids after every real one
