"""Fair use of the LLM, shared by every chat and summary worker through Redis: at most N calls in flight and
M calls started per minute, per tenant and overall. A call over a limit waits its turn (polling with jitter,
bounded by ``wait_timeout``) instead of failing at once; past the bound it raises ``Transient``, so the job
is retried later with backoff.

In-flight calls are leases in a sorted set (member: a random id, score: when the lease lapses), so the slot
of a worker that died mid-call frees itself. Starts per minute are counted in a per-minute key. One Lua
script checks and takes all four at once, so two workers never both take the last slot.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis

from protostar import backoff
from protostar.errors import Cancelled, Transient

logger = logging.getLogger(__name__)

PREFIX = "protostar:llm"

# KEYS: inflight_all, inflight_tenant, rpm_all, rpm_tenant
# ARGV: now, lease_until, member, max_all, max_tenant, rpm_all, rpm_tenant
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 1 end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then return 2 end
if tonumber(redis.call('GET', KEYS[3]) or '0') >= tonumber(ARGV[6]) then return 3 end
if tonumber(redis.call('GET', KEYS[4]) or '0') >= tonumber(ARGV[7]) then return 4 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], 3600)
redis.call('EXPIRE', KEYS[2], 3600)
redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], 120)
redis.call('INCR', KEYS[4])
redis.call('EXPIRE', KEYS[4], 120)
return 0
"""

_REASONS = {
    1: "calls in flight, all tenants",
    2: "calls in flight, this tenant",
    3: "calls per minute, all tenants",
    4: "calls per minute, this tenant",
}


@dataclass(frozen=True)
class Limits:
    concurrency: int
    tenant_concurrency: int
    rpm: int
    tenant_rpm: int
    wait_timeout: float
    lease: float  # longest a call may hold its slot (its total deadline plus a margin)


class LLMLimiter:
    def __init__(self, client: redis.Redis, limits: Limits) -> None:
        self.client = client
        self.limits = limits
        self._script = client.register_script(_ACQUIRE)

    @contextmanager
    def turn(self, tenant_id: uuid.UUID, *, stop: threading.Event | None = None) -> Iterator[float]:
        """Hold a slot for one LLM call; yields how long it waited for it (seconds)."""
        member, waited = self._acquire(tenant_id, stop)
        try:
            yield waited
        finally:
            try:
                self.client.zrem(self._inflight(None), member)
                self.client.zrem(self._inflight(tenant_id), member)
            except redis.RedisError:  # the lease lapses on its own
                logger.warning("could not release an LLM slot; it lapses in %.0f s", self.limits.lease)

    def _acquire(self, tenant_id: uuid.UUID, stop: threading.Event | None) -> tuple[str, float]:
        limits, started = self.limits, time.monotonic()
        member = secrets.token_hex(8)
        tries = 0
        while True:
            now = time.time()
            minute = int(now // 60)
            verdict = int(
                self._script(
                    keys=[
                        self._inflight(None),
                        self._inflight(tenant_id),
                        f"{PREFIX}:rpm:all:{minute}",
                        f"{PREFIX}:rpm:{tenant_id}:{minute}",
                    ],
                    args=[
                        now,
                        now + limits.lease,
                        member,
                        limits.concurrency,
                        limits.tenant_concurrency,
                        limits.rpm,
                        limits.tenant_rpm,
                    ],
                )
            )
            waited = time.monotonic() - started
            if verdict == 0:
                if waited > 0.5:
                    logger.info("tenant_id=%s waited %.1f s for an LLM slot", tenant_id, waited)
                return member, waited
            if waited >= limits.wait_timeout:
                raise Transient(
                    f"waited {waited:.0f} s for a turn at the LLM (limit reached: {_REASONS[verdict]}); retrying later"
                )
            pause = min(backoff.delay(tries, base=0.05, cap=1.0), limits.wait_timeout - waited)
            tries += 1
            if stop is not None and stop.wait(pause):
                raise Cancelled("cancelled by request")
            if stop is None:
                time.sleep(pause)

    @staticmethod
    def _inflight(tenant_id: uuid.UUID | None) -> str:
        return f"{PREFIX}:inflight:{tenant_id or 'all'}"
