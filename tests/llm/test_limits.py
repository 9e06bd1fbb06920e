"""The LLM limits, kept in the real Redis: a call over a limit looks again for a short moment only, then raises
``LLMBusy`` saying which limit and when a turn is likely (``retry_in``); slots free themselves."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
import redis

from protostar.errors import Cancelled, LLMBusy, Transient
from protostar.llm.limits import (
    CALL_SECONDS,
    DEFAULT_CALL_SECONDS,
    MAX_RETRY_IN,
    MIN_RETRY_IN,
    PREFIX,
    Limits,
    LLMLimiter,
    retry_in,
)
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
        "wait_timeout": 0.3,
        "lease": 60.0,
    }
    values.update(overrides)
    return LLMLimiter(client, Limits(**values))  # type: ignore[arg-type]


def test_a_call_over_the_concurrency_limit_takes_a_slot_freed_within_the_moment(client: redis.Redis) -> None:
    limits, tenant = limiter(client, tenant_concurrency=1, wait_timeout=5), uuid.uuid4()
    release = threading.Event()
    holding = threading.Event()

    def hold() -> None:
        with limits.turn(tenant):
            holding.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(5)
    threading.Timer(0.3, release.set).start()
    with limits.turn(tenant):  # the holder's slot, once it ended (no LLMBusy)
        pass
    holder.join()


def test_no_turn_within_the_moment_is_llm_busy_with_the_limit_and_a_retry_in(client: redis.Redis) -> None:
    limits, tenant = limiter(client, concurrency=1), uuid.uuid4()
    with (
        limits.turn(tenant),
        pytest.raises(LLMBusy, match="calls in flight, all tenants") as busy,
        limits.turn(uuid.uuid4()),
    ):
        pass
    assert isinstance(busy.value, Transient) and busy.value.code == "llm_busy"
    assert busy.value.limit == "calls in flight, all tenants"
    assert MIN_RETRY_IN <= busy.value.retry_in <= DEFAULT_CALL_SECONDS  # no call has ended yet: the default


def test_under_an_in_flight_limit_retry_in_comes_from_the_mean_call_time(client: redis.Redis) -> None:
    limits, tenant = limiter(client, tenant_concurrency=1), uuid.uuid4()
    with limits.turn(tenant):
        pass
    assert client.get(CALL_SECONDS) is not None  # an ended call updates the mean
    client.set(CALL_SECONDS, "7.5")
    with limits.turn(tenant), pytest.raises(LLMBusy, match="calls in flight, this tenant") as busy, limits.turn(tenant):
        pass
    assert MIN_RETRY_IN <= busy.value.retry_in <= 7.5  # the mean less what the call in flight has run already


def test_calls_per_minute_are_capped_per_tenant_until_the_next_minute(client: redis.Redis) -> None:
    limits, tenant = limiter(client, tenant_rpm=3), uuid.uuid4()
    for _ in range(3):
        with limits.turn(tenant):
            pass
    with pytest.raises(LLMBusy, match="calls per minute, this tenant") as busy, limits.turn(tenant):
        pass
    assert MIN_RETRY_IN <= busy.value.retry_in <= 60
    with limits.turn(uuid.uuid4()):  # another tenant has its own count
        pass


def test_retry_in_per_limit() -> None:
    assert retry_in(3, now=120.0 + 15.0, call_seconds=None) == 45.0  # the rest of the minute
    assert retry_in(4, now=179.9, call_seconds=4.0) == MIN_RETRY_IN  # never less than the floor
    assert retry_in(1, now=0.0, call_seconds=3.0) == 3.0  # a slot frees when a call ends
    assert retry_in(1, now=0.0, call_seconds=3.0, oldest_age=1.0) == 2.0  # what is likely left of the oldest
    assert retry_in(2, now=0.0, call_seconds=3.0, oldest_age=9.0) == MIN_RETRY_IN  # overdue: any moment now
    assert retry_in(2, now=0.0, call_seconds=None) == DEFAULT_CALL_SECONDS
    assert retry_in(2, now=0.0, call_seconds=0.01) == MIN_RETRY_IN
    assert retry_in(2, now=0.0, call_seconds=500.0) == MAX_RETRY_IN


def test_check_takes_nothing_and_says_when_there_is_no_turn(client: redis.Redis) -> None:
    limits, tenant = limiter(client, tenant_concurrency=1), uuid.uuid4()
    limits.check(tenant)
    limits.check(tenant)
    with limits.turn(tenant):  # the one slot was not taken by the checks
        with pytest.raises(LLMBusy, match="calls in flight, this tenant"):
            limits.check(tenant)
        limits.check(uuid.uuid4())


def test_a_tenant_can_have_its_own_limits(client: redis.Redis) -> None:
    limits, small, other = limiter(client, tenant_concurrency=5), uuid.uuid4(), uuid.uuid4()
    limits.set_tenant_limits(small, concurrency=1, rpm=None)
    with limits.turn(small):
        with pytest.raises(LLMBusy, match="calls in flight, this tenant"), limits.turn(small):
            pass
        with limits.turn(other), limits.turn(other):  # the default for everyone else
            pass
        limits.set_tenant_limits(small, concurrency=None, rpm=None)
        with limits.turn(small):  # the default again
            pass


def test_a_dead_holders_slot_lapses(client: redis.Redis) -> None:
    limits, tenant = limiter(client, concurrency=1, lease=0.5, wait_timeout=3), uuid.uuid4()
    limits._acquire(tenant, None)  # taken and never released, like a worker that died mid-call
    with limits.turn(tenant):
        pass


def test_a_cancel_ends_the_moment(client: redis.Redis) -> None:
    limits, stop = limiter(client, concurrency=1, wait_timeout=5), threading.Event()
    threading.Timer(0.2, stop.set).start()
    with limits.turn(uuid.uuid4()), pytest.raises(Cancelled), limits.turn(uuid.uuid4(), stop=stop):
        pass  # Cancelled, not LLMBusy: the cancel ended the moment
