"""One watcher per worker process serves all its running jobs (``jobs.watcher``): two threads whatever the number
of jobs, heartbeats and pending progress in one statement, every cancel flag read in one round trip; each job is
still cancelled within the poll, stopped at its deadline, and told when another delivery took it over."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import Engine, text

from protostar.constants import EventType
from protostar.jobs import repo
from protostar.jobs.context import JobContext
from protostar.jobs.events import EventLog, cancel_key, decode, stream_key
from protostar.jobs.watcher import ProcessWatcher, Watch
from protostar.settings import Settings
from tests.conftest import wait_for
from tests.jobs.test_reconcile import make_job


def _claimed(engine: Engine, settings: Settings, client: redis.Redis, **kw: object) -> JobContext:
    job_id = make_job(engine)
    claim = repo.claim(engine, job_id=job_id, worker="test-watcher", takeover_after=60, max_attempts=3)
    assert claim.job is not None, claim
    job = claim.job
    events = EventLog(client, ttl=60, maxlen=100)
    return JobContext(job.id, job.tenant_id, job.attempts, job.payload, engine, events, **kw)  # type: ignore[arg-type]


def _row(engine: Engine, job_id: uuid.UUID) -> dict[str, object]:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM jobs WHERE id = :id"), {"id": job_id}).mappings().one()
    return dict(row)


@pytest.fixture
def watcher(engine: Engine, client: redis.Redis, settings: Settings) -> ProcessWatcher:
    return ProcessWatcher(engine, client, heartbeat_interval=settings.heartbeat_interval)


@pytest.fixture
def watched(engine: Engine, client: redis.Redis, settings: Settings, watcher: ProcessWatcher) -> Iterator[list[Watch]]:
    watches: list[Watch] = []
    yield watches
    for watch in watches:
        watch.stop()
        with engine.begin() as conn:  # leave no running probe behind for the reconciler to pick up
            conn.execute(
                text("UPDATE jobs SET status = 'failed', finished_at = now() WHERE id = :id"), {"id": watch.ctx.job_id}
            )


def test_one_watcher_cancels_each_flagged_job_within_its_poll(
    engine: Engine, client: redis.Redis, settings: Settings, watcher: ProcessWatcher, watched: list[Watch]
) -> None:
    contexts = [_claimed(engine, settings, client) for _ in range(4)]
    watched += [ctx.watched_by(watcher) for ctx in contexts]
    flagged, spared = contexts[::2], contexts[1::2]
    for ctx in flagged:
        client.set(cancel_key(ctx.job_id), "1", ex=60)
    for ctx in flagged:
        wait_for(ctx.cancelled.is_set, timeout=5, what=f"{ctx.job_id} cancelled by its flag")
    time.sleep(0.6)  # more polls of the flags: the others stay running
    assert not any(ctx.cancelled.is_set() for ctx in spared)
    assert len(watcher._threads) == 2  # two threads for the four jobs


def test_beats_write_pending_progress_and_see_cancel_requests(
    engine: Engine, client: redis.Redis, settings: Settings, watcher: ProcessWatcher, watched: list[Watch]
) -> None:
    first, second = _claimed(engine, settings, client), _claimed(engine, settings, client)
    watched += [first.watched_by(watcher), second.watched_by(watcher)]
    beaten = {ctx.job_id: _row(engine, ctx.job_id)["heartbeat_at"] for ctx in (first, second)}
    first.progress("reading", 2, 5)
    assert first.pending_progress is not None  # not written by a statement of its own
    wait_for(lambda: _row(engine, first.job_id)["stage"] == "reading", timeout=5, what="the progress written")
    assert _row(engine, first.job_id)["progress_done"] == 2
    wait_for(
        lambda: all(_row(engine, j)["heartbeat_at"] > at for j, at in beaten.items()),  # type: ignore[operator]
        timeout=5,
        what="both jobs beaten",
    )
    with engine.begin() as conn:  # a cancel the API recorded on the row only (its Redis flag lost)
        conn.execute(text("UPDATE jobs SET cancel_requested = true WHERE id = :id"), {"id": second.job_id})
    wait_for(second.cancelled.is_set, timeout=5, what="the row's cancel request seen by a beat")
    assert not first.cancelled.is_set()


def test_a_job_taken_over_is_told_and_the_others_keep_beating(
    engine: Engine, client: redis.Redis, settings: Settings, watcher: ProcessWatcher, watched: list[Watch]
) -> None:
    taken, kept = _claimed(engine, settings, client), _claimed(engine, settings, client)
    watched += [taken.watched_by(watcher), kept.watched_by(watcher)]
    with engine.begin() as conn:  # another delivery claimed it after its heartbeat went stale
        conn.execute(text("UPDATE jobs SET attempts = attempts + 1 WHERE id = :id"), {"id": taken.job_id})
    wait_for(taken.cancelled.is_set, timeout=5, what="the job taken over stopped")
    assert watched[0].lost and not watched[1].lost and not kept.cancelled.is_set()
    before = _row(engine, kept.job_id)["heartbeat_at"]
    wait_for(lambda: _row(engine, kept.job_id)["heartbeat_at"] > before, timeout=5, what="a beat")  # type: ignore[operator]


def test_each_job_is_stopped_at_its_own_deadline(
    engine: Engine, client: redis.Redis, settings: Settings, watcher: ProcessWatcher, watched: list[Watch]
) -> None:
    soon = _claimed(engine, settings, client, deadline=time.monotonic() + 0.3)
    later = _claimed(engine, settings, client, deadline=time.monotonic() + 3600)
    watched += [later.watched_by(watcher), soon.watched_by(watcher)]
    wait_for(soon.cancelled.is_set, timeout=5, what="the job past its deadline stopped")
    assert soon.timed_out and not later.cancelled.is_set()


def test_a_stopped_watch_is_no_longer_beaten(
    engine: Engine, client: redis.Redis, settings: Settings, watcher: ProcessWatcher, watched: list[Watch]
) -> None:
    ctx = _claimed(engine, settings, client)
    watch = ctx.watched_by(watcher)
    watched.append(watch)
    watch.stop()
    client.set(cancel_key(ctx.job_id), "1", ex=60)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE jobs SET heartbeat_at = now() - interval '1 hour' WHERE id = :id"), {"id": ctx.job_id}
        )
    time.sleep(settings.heartbeat_interval * 2 + 0.5)
    assert not ctx.cancelled.is_set()
    assert _row(engine, ctx.job_id)["heartbeat_at"] < _row(engine, ctx.job_id)["created_at"]  # type: ignore[operator]


def _events(client: redis.Redis, job_id: uuid.UUID) -> list[tuple[str, dict[str, object]]]:
    entries = client.xrange(stream_key(job_id))
    return [(e.type, e.data) for e in (decode(entry_id, fields) for entry_id, fields in entries)]


def test_a_held_event_goes_first_with_the_next_or_within_the_poll(
    engine: Engine, client: redis.Redis, settings: Settings, watcher: ProcessWatcher, watched: list[Watch]
) -> None:
    quiet, busy = _claimed(engine, settings, client), _claimed(engine, settings, client)
    for ctx in (quiet, busy):
        ctx.hold(EventType.STATUS, {"status": "running"})
    busy.progress("reading", 0, 1, persist=False)  # before the watcher sees it: the two go together, in order
    assert [t for t, _ in _events(client, busy.job_id)] == ["status", "progress"]
    watched += [quiet.watched_by(watcher), busy.watched_by(watcher)]
    wait_for(lambda: _events(client, quiet.job_id), timeout=5, what="the held event sent by the watcher")
    assert _events(client, quiet.job_id) == [("status", {"status": "running"})]
    assert len(_events(client, busy.job_id)) == 2  # sent once
