"""The LLM limits, kept in the real Redis: calls over a limit wait their turn, bounded; slots free themselves."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from protostar.errors import Cancelled, Transient
from protostar.llm.limits import PREFIX, Limits, LLMLimiter
from protostar.settings import Settings


@pytest.fixture
def client(settings: Settings) -> Iterator[redis.Redis]:
    assert settings.redis_url
    client = redis.Redis.from_url(settings.redis_url)
    for key in client.scan_iter(f"{PREFIX}:*"):
        client.delete(key)
    yield client
    client.close()


def limiter(client: redis.Redis, **overrides: float) -> LLMLimiter:
    values: dict[str, float] = {
        "concurrency": 100,
        "tenant_concurrency": 100,
        "rpm": 10_000,
        "tenant_rpm": 10_000,
        "wait_timeout": 5.0,
        "lease": 60.0,
    }
    values.update(overrides)
    return LLMLimiter(client, Limits(**values))  # type: ignore[arg-type]


def test_a_call_over_the_concurrency_limit_waits_for_a_slot(client: redis.Redis) -> None:
    limits, tenant = limiter(client, tenant_concurrency=1), uuid.uuid4()
    release = threading.Event()
    holding = threading.Event()

    def hold() -> None:
        with limits.turn(tenant):
            holding.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(5)
    threading.Timer(0.5, release.set).start()
    with limits.turn(tenant) as waited:
        assert waited >= 0.4
    holder.join()
    with limits.turn(uuid.uuid4()) as other_waited:  # another tenant never waited
        assert other_waited < 0.4


def test_the_wait_is_bounded_and_then_transient(client: redis.Redis) -> None:
    limits, tenant = limiter(client, concurrency=1, wait_timeout=0.5), uuid.uuid4()
    with (
        limits.turn(tenant),
        pytest.raises(Transient, match="calls in flight, all tenants"),
        limits.turn(uuid.uuid4()),
    ):
        pass


def test_calls_per_minute_are_capped_per_tenant(client: redis.Redis) -> None:
    limits, tenant = limiter(client, tenant_rpm=3, wait_timeout=0.3), uuid.uuid4()
    for _ in range(3):
        with limits.turn(tenant):
            pass
    with pytest.raises(Transient, match="calls per minute, this tenant"), limits.turn(tenant):
        pass
    with limits.turn(uuid.uuid4()):
        pass


def test_a_dead_holders_slot_lapses(client: redis.Redis) -> None:
    limits, tenant = limiter(client, concurrency=1, lease=0.5, wait_timeout=3), uuid.uuid4()
    limits._acquire(tenant, None)  # taken and never released, like a worker that died mid-call
    started = time.monotonic()
    with limits.turn(tenant):
        assert time.monotonic() - started >= 0.3


def test_a_cancel_ends_the_wait(client: redis.Redis) -> None:
    limits, stop = limiter(client, concurrency=1, wait_timeout=10), threading.Event()
    threading.Timer(0.3, stop.set).start()
    with limits.turn(uuid.uuid4()), pytest.raises(Cancelled), limits.turn(uuid.uuid4(), stop=stop):
        pass
