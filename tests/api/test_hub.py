"""The relay's fan-out on the test stack's real Redis: one blocking read for every followed key, each entry to
every subscriber of its key, a join waking the read, a slow subscriber told to replay."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from protostar.api import hub as hub_module
from protostar.api.hub import OVERFLOW, Hub
from protostar.constants import EventType
from protostar.jobs.events import Event, EventLog
from protostar.runtime.stack import Stack
from protostar.settings import Settings
from tests.conftest import wait_for

LONG_BLOCK_MS = 120_000  # longer than any wait below: only a wake can end the hub's read in time


async def _take(sub: hub_module.Subscription, count: int) -> list[Event]:
    got: list[Event] = []
    while len(got) < count:
        item = await sub.next(30)
        assert item is not None, f"nothing after {len(got)} events"
        assert isinstance(item, list)
        got += item
    return got


def test_fan_out_to_every_subscriber_of_each_key(stack: Stack, settings: Settings) -> None:
    import redis

    assert settings.redis_url
    sync = redis.Redis.from_url(settings.redis_url)
    log = EventLog(sync, ttl=60, maxlen=1000)
    first, second = uuid.uuid4(), uuid.uuid4()

    async def run() -> None:
        hub = Hub(settings.redis_url or "", connect_timeout=2, read_timeout=5, block_ms=LONG_BLOCK_MS)
        await hub.start()
        try:
            a1, a2 = hub.subscribe(first, "0-0"), hub.subscribe(first, "0-0")
            b = hub.subscribe(second, "0-0")
            await asyncio.sleep(0.2)  # the hub is blocked in its read by now
            ids_a = [log.publish(first, EventType.PROGRESS, {"n": n}) for n in range(3)]
            ids_b = [log.publish(second, EventType.PROGRESS, {"n": n}) for n in range(2)]
            assert [e.id for e in await _take(a1, 3)] == ids_a
            assert [e.id for e in await _take(a2, 3)] == ids_a
            assert [e.id for e in await _take(b, 2)] == ids_b
            # A join while the hub blocks on other keys wakes it (its read lasts minutes otherwise).
            late = uuid.uuid4()
            c = hub.subscribe(late, "0-0")
            await asyncio.sleep(0.2)
            ids_c = [log.publish(late, EventType.PROGRESS, {"n": 0})]
            assert [e.id for e in await _take(c, 1)] == ids_c
            hub.unsubscribe(a1)
            hub.unsubscribe(a2)
            hub.unsubscribe(b)
            hub.unsubscribe(c)
            assert hub.followers == 0
        finally:
            await hub.stop()

    asyncio.run(run())
    sync.close()


def test_a_subscriber_that_falls_behind_is_told_to_replay() -> None:
    sub = hub_module.Subscription("k")
    batch = [Event(id="1-0", type="progress", data={})]
    for _ in range(hub_module.QUEUE_BATCHES + 5):
        sub.offer(batch)
    assert sub.overflowed
    items = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
    assert items[-1] is OVERFLOW and len(items) == hub_module.QUEUE_BATCHES + 1

    async def last() -> object:
        sub.queue.put_nowait(OVERFLOW)
        return await sub.next(1)

    assert asyncio.run(last()) is OVERFLOW
    assert not sub.overflowed  # taken again from here on


@pytest.mark.slow
def test_the_hub_reconnects_and_keeps_its_subscribers_when_redis_restarts(stack: Stack, settings: Settings) -> None:
    import redis

    assert settings.redis_url and stack.redis is not None
    sync = redis.Redis.from_url(settings.redis_url)
    log = EventLog(sync, ttl=60, maxlen=1000)
    job = uuid.uuid4()

    def publish() -> str:
        def sent() -> str | None:
            try:
                return log.publish(job, EventType.PROGRESS, {"n": 1})
            except redis.RedisError:
                return None

        return str(wait_for(sent, timeout=30, every=0.2, what="Redis to take an event again"))

    async def run() -> None:
        hub = Hub(settings.redis_url or "", connect_timeout=1, read_timeout=2, block_ms=1_000)
        await hub.start()
        try:
            sub = hub.subscribe(job, "0-0")
            await asyncio.sleep(0.2)
            first = publish()
            assert [e.id for e in await _take(sub, 1)] == [first]
            assert await hub.exists(job)  # a short read: its pooled connection is dead after the restart
            assert stack.redis is not None
            stack.redis.stop()
            await asyncio.sleep(2.5)  # the hub's reads fail meanwhile
            stack.redis.start()
            second = await asyncio.to_thread(publish)
            assert [e.id for e in await _take(sub, 1)] == [second]  # the same subscriber, after the restart
            assert hub.reconnects > 0
            # The short reads' pool replaces its dead connections (before, the first read answered a stream 503).
            assert [e.id for e in await hub.replay(job, "0-0")] == [first, second]
        finally:
            await hub.stop()

    try:
        asyncio.run(run())
    finally:
        if stack.redis.pid is None:
            stack.redis.start()
        sync.close()
