"""The submit's one statement (``jobs.turns.insert``, migration 0014): under concurrent submits of one tenant,
through both paths (alone in autocommit, and inside a caller's transaction), the cap of jobs sent and the
queued-jobs quota stay exact; a broker that refuses the send, or an event store that refuses a waiting job's
event, ends the job ``failed`` (``broker_unavailable``) and raises ``BrokerUnavailable``; a waiting job's event
is not written after its turn came; one summary in flight per target.

A stub stands in for Celery, so no worker runs these jobs and the counts are the submits' own."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from protostar.constants import EventType, JobKind, Queue
from protostar.db.engine import make_engine, make_sessionmaker
from protostar.errors import BrokerUnavailable, TooManyRequests
from protostar.jobs import turns
from protostar.jobs.dispatch import Dispatcher
from protostar.jobs.events import EventLog, stream_key
from protostar.settings import Settings
from tests.conftest import Live
from tests.submits import Broker, Stubbed, new_tenant

CAP, QUOTA = 3, 20


def limited(live: Live) -> Settings:
    return live.settings.model_copy(update={"tenant_inflight_summary": CAP, "tenant_max_queued": QUOTA})


def dispatcher_of(live: Live, engine: Engine, client: redis.Redis, broker: Broker) -> Dispatcher:
    settings = limited(live)
    events = EventLog(client, ttl=settings.events_ttl, maxlen=settings.events_maxlen)
    return Stubbed(celery=broker, engine=engine, events=events, settings=settings)  # type: ignore[arg-type]


def probe(dispatcher: Dispatcher, session: Session | None, tenant: uuid.UUID) -> str:
    return str(
        dispatcher.submit(
            session, kind=JobKind.PROBE, tenant_id=tenant, payload={"steps": 1}, queue=Queue.SUMMARY
        ).job.id
    )


def counts(engine: Engine, tenant: uuid.UUID) -> tuple[int, int, int]:
    """(all, sent, waiting their turn) of the tenant's jobs."""
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT count(*), count(*) FILTER (WHERE dispatched_at IS NOT NULL), "
                "count(*) FILTER (WHERE stage = 'waiting_turn' AND dispatched_at IS NULL) FROM jobs "
                "WHERE tenant_id = :t"
            ),
            {"t": tenant},
        ).one()
    return int(row[0]), int(row[1]), int(row[2])


def test_concurrent_submits_keep_the_cap_and_the_quota_exact(live: Live, pool: Engine, client: redis.Redis) -> None:
    broker = Broker()
    dispatcher = dispatcher_of(live, pool, client, broker)
    tenant = new_tenant(pool)
    sessions = make_sessionmaker(pool)

    def one(i: int) -> str:
        try:
            if i % 2:  # alone: one statement in autocommit
                return probe(dispatcher, None, tenant)
            with sessions() as session:  # inside a transaction the caller began (as an upload's)
                session.execute(text("SELECT 1"))
                return probe(dispatcher, session, tenant)
        except TooManyRequests:
            return "429"

    with ThreadPoolExecutor(8) as threads:
        answers = list(threads.map(one, range(QUOTA + 16)))
    accepted = [a for a in answers if a != "429"]
    assert len(accepted) == QUOTA  # exactly the quota, not one more
    assert counts(pool, tenant) == (QUOTA, CAP, QUOTA - CAP)  # exactly the cap sent, the rest wait their turn
    with pool.connect() as conn:
        dispatched = {
            str(r)
            for r in conn.execute(
                text("SELECT id FROM jobs WHERE tenant_id = :t AND dispatched_at IS NOT NULL"), {"t": tenant}
            ).scalars()
        }
    assert set(broker.sent) == dispatched  # what was sent is what is counted as sent, each once
    assert len(broker.sent) == CAP
    for job_id in accepted:  # every job has its queued event
        assert client.xlen(stream_key(job_id)) == 1


def ended_failed(engine: Engine, job_id: uuid.UUID) -> tuple[str, str | None]:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT status, error_code FROM jobs WHERE id = :id"), {"id": job_id}).one()
    return str(row[0]), row[1]


def test_a_refused_send_ends_the_job_failed_and_raises_broker_unavailable(
    live: Live, pool: Engine, client: redis.Redis
) -> None:
    broker = Broker(down=True)
    dispatcher = dispatcher_of(live, pool, client, broker)
    tenant = new_tenant(pool)
    job_id = uuid.uuid4()
    with pytest.raises(BrokerUnavailable):
        dispatcher.submit(
            None, kind=JobKind.PROBE, tenant_id=tenant, payload={"steps": 1}, queue=Queue.SUMMARY, job_id=job_id
        )
    assert ended_failed(pool, job_id) == ("failed", "broker_unavailable")


def test_a_waiting_job_whose_event_cannot_be_written_ends_failed(live: Live, pool: Engine, client: redis.Redis) -> None:
    broker = Broker()
    dispatcher = dispatcher_of(live, pool, client, broker)
    tenant = new_tenant(pool)
    for _ in range(CAP):  # its slots taken: the next one waits its turn
        probe(dispatcher, None, tenant)
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)  # nothing listens on port 1
    cut_off = Stubbed(
        celery=broker,  # type: ignore[arg-type]
        engine=pool,
        events=EventLog(dead, ttl=60, maxlen=100),
        settings=dispatcher.settings,
    )
    job_id = uuid.uuid4()
    with pytest.raises(BrokerUnavailable):
        cut_off.submit(
            None, kind=JobKind.PROBE, tenant_id=tenant, payload={"steps": 1}, queue=Queue.SUMMARY, job_id=job_id
        )
    assert ended_failed(pool, job_id) == ("failed", "broker_unavailable")
    assert len(broker.sent) == CAP


def test_a_waiting_jobs_event_is_not_written_after_its_turn_came(live: Live, pool: Engine, client: redis.Redis) -> None:
    dispatcher = dispatcher_of(live, pool, client, Broker())
    job = turns.Released(uuid.uuid4(), "protostar.probe", Queue.SUMMARY.value)
    dispatcher.events.publish(job.id, EventType.STATUS, {"status": "queued", "reason": "turn came"})
    waiting = turns.Admission(send=False, in_flight=CAP, cap=CAP)
    dispatcher._announce_waiting(job, waiting)  # type: ignore[arg-type]
    assert client.xlen(stream_key(job.id)) == 1  # the turn's event stands alone
    fresh = turns.Released(uuid.uuid4(), "protostar.probe", Queue.SUMMARY.value)
    dispatcher._announce_waiting(fresh, waiting)  # type: ignore[arg-type]
    assert client.xlen(stream_key(fresh.id)) == 1
    assert 0 < client.ttl(stream_key(fresh.id)) <= dispatcher.settings.events_ttl


@pytest.mark.parametrize("alone", [True, False])
def test_one_summary_in_flight_per_target(live: Live, pool: Engine, client: redis.Redis, alone: bool) -> None:
    dispatcher = dispatcher_of(live, pool, client, Broker())
    tenant = new_tenant(pool)
    target = str(uuid.uuid4())

    def summarize() -> tuple[str, bool]:
        with make_sessionmaker(pool)() as session:
            if not alone:
                session.execute(text("SELECT 1"))
            submitted = dispatcher.submit(
                session if not alone else None,
                kind=JobKind.SUMMARY_DOCUMENT,
                tenant_id=tenant,
                payload={"document_id": target},
                quota=False,
            )
            return str(submitted.job.id), submitted.created

    with ThreadPoolExecutor(4) as threads:
        answers = list(threads.map(lambda _: summarize(), range(6)))
    assert len({job_id for job_id, _ in answers}) == 1
    assert sum(created for _, created in answers) == 1


def test_a_submit_leaves_its_connection_committing_synchronously(live: Live, pool: Engine, client: redis.Redis) -> None:
    """The submit's own commit waits for no disk (``synchronous_commit`` off for that transaction only); the
    connection it goes back to the pool with commits synchronously, and the job is committed."""
    engine = make_engine(live.settings, pool_size=1, max_overflow=0)  # one connection: the submit's
    try:
        dispatcher = dispatcher_of(live, engine, client, Broker())
        tenant = new_tenant(engine)
        job_id = probe(dispatcher, None, tenant)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
        assert counts(pool, tenant) == (1, 1, 0)
        assert client.xlen(stream_key(job_id)) == 1
    finally:
        engine.dispose()


def test_the_statement_after_commit_is_a_synchronous_transaction_of_its_own(pool: Engine) -> None:
    """What ``turns.insert(alone=True)`` relies on: in one simple-protocol message, ``COMMIT`` ends the
    transaction the submit ran in (committed without waiting for the disk), and the statement after it runs in
    a transaction of its own, committed synchronously (which flushes the WAL up to it)."""
    with pool.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        driver = conn.connection.driver_connection
        notices: list[str] = []
        driver.add_notice_handler(lambda d: notices.append(f"{d.severity}: {d.message_primary}"))
        cur = driver.cursor()
        cur.execute(
            "SELECT current_setting('synchronous_commit'), set_config('synchronous_commit', 'off', true), "
            "txid_current(); COMMIT; SELECT current_setting('synchronous_commit'), txid_current()"
        )
        before, _, first = cur.fetchone()
        assert cur.nextset() and cur.nextset()
        after, second = cur.fetchone()
    assert (before, after) == ("on", "on"), notices
    assert second != first, notices  # two transactions


def test_a_payload_with_quotes_percents_and_backslashes_is_stored_as_given(
    live: Live, pool: Engine, client: redis.Redis
) -> None:
    """The one-message submit renders its values as literals (``turns._alone``): psycopg quotes them."""
    dispatcher = dispatcher_of(live, pool, client, Broker())
    tenant = new_tenant(pool)
    payload = {"steps": 1, "fail": '50% o\'clock \\ "quoted" %s %(x)s $$ ; COMMIT; --', "n": [1, None, True]}
    job_id = dispatcher.submit(None, kind=JobKind.PROBE, tenant_id=tenant, payload=payload, queue=Queue.SUMMARY).job.id
    with pool.connect() as conn:
        stored = conn.execute(text("SELECT payload FROM jobs WHERE id = :id"), {"id": job_id}).scalar_one()
    assert stored == payload
