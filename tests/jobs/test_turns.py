"""Fair turns between tenants (``protostar.jobs.turns``): one tenant's backlog never stands in front of another
tenant's job, a tenant past its queued-jobs quota is told to come back (429, nothing accepted), a job waiting its
turn can be cancelled and never runs, and the reconciler sends waiting jobs an ending did not.

Each test has tenants of its own. Orders of events are asserted from the jobs table, never durations."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from protostar.auth import create_key, ensure_tenant
from protostar.constants import JobKind, TaskName
from protostar.db.engine import make_sessionmaker
from protostar.jobs import repo, turns
from protostar.jobs.dispatch import Dispatcher
from protostar.jobs.reconcile import reconcile
from protostar.storage import make_minio
from tests.api.test_jobs import submit, wait_status
from tests.conftest import Live, wait_for
from tests.sse import read_events


def tenant_client(live: Live, engine: Engine, prefix: str) -> httpx.Client:
    """A client with an admin key (probes need one) of a new tenant."""
    with make_sessionmaker(engine).begin() as session:
        key = create_key(session, tenant=f"{prefix}-{uuid.uuid4().hex[:8]}", admin=True)
    return live.client(key)


@pytest.fixture
def tenant_a(live: Live, engine: Engine) -> Iterator[httpx.Client]:
    with tenant_client(live, engine, "turns-a") as client:
        yield client


@pytest.fixture
def tenant_b(live: Live, engine: Engine) -> Iterator[httpx.Client]:
    with tenant_client(live, engine, "turns-b") as client:
        yield client


def backlog(client: httpx.Client, n: int, **probe: object) -> list[str]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda _: submit(client, **probe), range(n)))


def overtaking(engine: Engine, job_ids: list[str], job_id: str) -> int:
    """How many of ``job_ids`` started after ``job_id`` was submitted and before it started."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM jobs a, jobs b WHERE b.id = :b AND a.id = ANY(:ids) "
                    "AND a.started_at > b.created_at AND a.started_at < b.started_at"
                ),
                {"b": job_id, "ids": job_ids},
            ).scalar_one()
        )


def all_succeed(client: httpx.Client, job_ids: list[str], *, timeout: float) -> None:
    def done() -> bool:
        return all(client.get(f"/v1/jobs/{j}").json()["status"] == "succeeded" for j in job_ids)

    wait_for(done, timeout=timeout, every=1.0, what=f"all {len(job_ids)} jobs of the backlog to succeed")


@pytest.mark.parametrize(
    ("queue", "backlog_size", "probe"),
    [("ingest", 120, {"steps": 1, "sleep": 0.2}), ("chat", 30, {"steps": 2, "sleep": 0.5})],
)
def test_another_tenants_job_is_not_stuck_behind_a_backlog(
    live: Live,
    engine: Engine,
    tenant_a: httpx.Client,
    tenant_b: httpx.Client,
    queue: str,
    backlog_size: int,
    probe: dict[str, object],
) -> None:
    """Tenant A queues a backlog; tenant B's one job starts after at most about one A job per slot A holds (the
    A jobs that started between B's submit and B's start are counted), not after A's backlog; then every one
    of A's jobs runs to success: none is left waiting."""
    a_jobs = backlog(tenant_a, backlog_size, queue=queue, **probe)
    cap = live.settings.tenant_inflight_ingest if queue == "ingest" else live.settings.tenant_inflight_chat
    with engine.connect() as conn:  # concurrent submits never put more than the cap in flight
        in_flight = conn.execute(
            text(
                "SELECT count(*) FROM jobs WHERE id = ANY(:ids) AND status IN ('queued', 'running') "
                "AND dispatched_at IS NOT NULL"
            ),
            {"ids": a_jobs},
        ).scalar_one()
    assert in_flight <= cap
    waiting = [j for j in a_jobs if tenant_a.get(f"/v1/jobs/{j}").json()["progress"]["stage"] == turns.WAITING_TURN]
    assert waiting, "A's backlog is held back: its cap is below its backlog"
    b_job = submit(tenant_b, queue=queue, steps=1)
    wait_status(tenant_b, b_job, "succeeded", timeout=60)
    assert overtaking(engine, a_jobs, b_job) <= cap + 2
    assert sum(tenant_a.get(f"/v1/jobs/{j}").json()["status"] != "succeeded" for j in a_jobs) > 0, (
        "B finished before A's backlog did"
    )
    all_succeed(tenant_a, a_jobs, timeout=180)


def test_a_job_waiting_its_turn_says_why_and_a_cancelled_one_never_runs(live: Live, tenant_a: httpx.Client) -> None:
    cap = live.settings.tenant_inflight_ingest
    running = [submit(tenant_a, queue="ingest", steps=40, sleep=0.25) for _ in range(cap)]
    held, after = submit(tenant_a, queue="ingest", steps=1), submit(tenant_a, queue="ingest", steps=1)
    job = tenant_a.get(f"/v1/jobs/{held}").json()
    assert job["status"] == "queued" and job["progress"]["stage"] == turns.WAITING_TURN
    first = next(read_events(tenant_a, held, stop_after=1))
    assert first.event == "status" and first.data["waiting_for"] == "turn", first.data
    assert first.data["cap"] == cap and first.data["message"]

    assert tenant_a.post(f"/v1/jobs/{held}/cancel").json()["status"] == "cancelled"
    for job_id in running:  # their ends send the next waiting job: not the cancelled one
        tenant_a.post(f"/v1/jobs/{job_id}/cancel")
    wait_status(tenant_a, after, "succeeded", timeout=60)
    job = tenant_a.get(f"/v1/jobs/{held}").json()
    assert job["status"] == "cancelled" and job["attempts"] == 0 and job["started_at"] is None


def test_past_the_queued_quota_a_submit_is_429_and_nothing_is_accepted(
    live: Live, engine: Engine, tenant_a: httpx.Client
) -> None:
    quota, cap = live.settings.tenant_max_queued, live.settings.tenant_inflight_ingest
    jobs = [submit(tenant_a, queue="ingest", steps=60, sleep=0.5) for _ in range(cap)]  # hold its slots
    for job_id in jobs:
        wait_status(tenant_a, job_id, "running", timeout=60)
    with ThreadPoolExecutor(8) as pool:  # concurrent submits: the count and the insert are one under the lock
        answers = list(pool.map(lambda _: tenant_a.post("/v1/probes", json={"queue": "ingest"}), range(quota + 10)))
    jobs += [a.json()["job_id"] for a in answers if a.status_code == 202]
    assert sorted({a.status_code for a in answers}) == [202, 429]
    assert len(jobs) == cap + quota  # exactly the quota accepted, not one more
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["error"]["code"] == "too_many_requests"
    assert int(refused.headers["retry-after"]) > 0
    upload = tenant_a.post("/v1/documents", files={"file": ("over.txt", b"one upload too many\n" * 20, "text/plain")})
    assert upload.status_code == 429, upload.text
    assert int(upload.headers["retry-after"]) > 0
    assert tenant_a.get("/v1/documents").json()["items"] == []  # no document row
    with engine.connect() as conn:
        tenant = conn.execute(text("SELECT tenant_id FROM jobs WHERE id = :id"), {"id": jobs[0]}).scalar_one()
        count = conn.execute(text("SELECT count(*) FROM jobs WHERE tenant_id = :t"), {"t": tenant}).scalar_one()
    assert count == len(jobs)  # the refused submits wrote nothing
    minio = make_minio(live.settings)  # nor was the refused upload stored
    assert list(minio.list_objects(live.settings.s3_bucket, prefix=f"tenants/{tenant}/", recursive=True)) == []
    with ThreadPoolExecutor(8) as pool:  # leave the queue to the other tests
        list(pool.map(lambda j: tenant_a.post(f"/v1/jobs/{j}/cancel"), jobs))
    for job_id in jobs[:cap]:
        wait_status(tenant_a, job_id, "cancelled", timeout=30)


def held_jobs(engine: Engine, n: int) -> list[uuid.UUID]:
    """``n`` ingest probes of a new tenant, committed waiting their turn as a submit past the cap commits them,
    with none of the tenant's jobs in flight: no ending will ever send them (as after a worker killed)."""
    with Session(engine) as session, session.begin():
        tenant = ensure_tenant(session, f"turns-held-{uuid.uuid4().hex[:8]}")
        return [
            repo.create(
                session,
                tenant_id=tenant,
                kind=JobKind.PROBE.value,
                task_name=TaskName.PROBE.value,
                queue="ingest",
                payload={"steps": 1, "sleep": 0.3, "fail": None},
                dispatched=False,
                stage=turns.WAITING_TURN,
            ).id
            for _ in range(n)
        ]


def test_a_stray_delivery_of_a_job_waiting_its_turn_does_not_run_it(engine: Engine) -> None:
    """A message of a job that waits its turn (a late redelivery after the job was put back waiting) must not
    start it past its tenant's cap: the claim leaves it waiting, and its turn sends it again."""
    (job_id,) = held_jobs(engine, 1)
    claim = repo.claim(engine, job_id=job_id, worker="stray", takeover_after=60.0, max_attempts=3)
    assert (claim.job, claim.reason) == (None, "waiting")
    with engine.connect() as conn:
        row = conn.execute(text("SELECT status, attempts, stage FROM jobs WHERE id = :id"), {"id": job_id}).one()
    assert tuple(row) == ("queued", 0, turns.WAITING_TURN)


def test_a_turn_whose_send_fails_waits_again_and_holds_no_slot(
    engine: Engine, dispatcher: Dispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker away when a turn comes: the taken jobs are not left counted in flight with no message (their
    tenant's slots would stay full until the reconciler ran); they wait their turn again."""
    job_ids = held_jobs(engine, 2)

    def broker_down(job: object, status: object = None) -> None:
        raise ConnectionRefusedError("the broker is away")

    monkeypatch.setattr(dispatcher, "send", broker_down)
    with engine.connect() as conn:
        tenant = conn.execute(text("SELECT tenant_id FROM jobs WHERE id = :id"), {"id": job_ids[0]}).scalar_one()
    assert dispatcher.next_turn(tenant_id=tenant, queue="ingest") == 2
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT status, stage, dispatched_at IS NULL FROM jobs WHERE id = ANY(:ids)"), {"ids": job_ids}
        ).all()
    assert [tuple(r) for r in rows] == [("queued", turns.WAITING_TURN, True)] * 2


def test_the_reconciler_sends_waiting_jobs_that_no_ending_sent(
    live: Live, engine: Engine, client: redis.Redis, dispatcher: Dispatcher, api: httpx.Client
) -> None:
    cap = live.settings.tenant_inflight_ingest
    job_ids = held_jobs(engine, cap + 2)
    with Session(engine) as session:
        reconcile(session=session, client=client, dispatcher=dispatcher)
    with engine.connect() as conn:
        sent = conn.execute(
            text("SELECT count(*) FROM jobs WHERE id = ANY(:ids) AND dispatched_at IS NOT NULL"), {"ids": job_ids}
        ).scalar_one()
    assert sent == cap  # within the tenant's cap; the endings of these send the rest

    def ended() -> bool:
        with engine.connect() as conn:
            statuses = conn.execute(text("SELECT status FROM jobs WHERE id = ANY(:ids)"), {"ids": job_ids}).scalars()
            return all(s == "succeeded" for s in statuses)

    wait_for(ended, timeout=60, what="every waiting job to run")
