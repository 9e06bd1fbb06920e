"""Fair use of the LLM, shared by every chat and summary worker through Redis: at most N calls in flight and
M calls started per minute, per tenant and overall. A call over a limit never holds its worker thread for long:
it looks again for at most ``wait_timeout`` (a short moment, one second by default), then raises
:class:`~protostar.errors.LLMBusy` with ``retry_in``, the seconds until a turn is likely. The job shell then
puts the job back in its queue to run again after about that long (``worker/shell.py``), so the thread serves
other tenants' jobs meanwhile.

``retry_in``: under a per-minute limit, the seconds left in the current minute (the count starts again then);
under an in-flight limit, what is likely left of the oldest call in flight (a slot frees when it ends): the mean
time of an LLM call (a moving average kept in Redis as calls end) less that call's age. Both are bounded by
``MIN_RETRY_IN`` and ``MAX_RETRY_IN``.

In-flight calls are leases in a sorted set (member: a random id, score: when the lease lapses), so the slot
of a worker that died mid-call frees itself. Starts per minute are counted in a per-minute key. One Lua
script checks and takes all four at once, so two workers never both take the last slot. A tenant's own limits
(``set_tenant_limits``, a Redis hash) replace the per-tenant defaults for that tenant.
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
from protostar.errors import Cancelled, LLMBusy

logger = logging.getLogger(__name__)

PREFIX = "protostar:llm"
CALL_SECONDS = f"{PREFIX}:call_seconds"  # moving average of an LLM call's duration (seconds)
DEFAULT_CALL_SECONDS = 2.0  # the estimate before any call has ended
MIN_RETRY_IN = 0.5
MAX_RETRY_IN = 60.0

# KEYS: inflight_all, inflight_tenant, rpm_all, rpm_tenant, tenant_limits, call_seconds
# ARGV: now, lease_until, member, max_all, max_tenant, rpm_all, rpm_tenant, take ('1': take the turn, '0': look)
# Returns {verdict, mean call seconds or '', age of the oldest call in flight under the limit or ''}: verdict 0 is
# a turn (taken when ``take``), 1-4 the limit reached. Leases are equally long, so a call's age is our lease_until
# less its.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local own = redis.call('HMGET', KEYS[5], 'concurrency', 'rpm')
local max_tenant = tonumber(own[1]) or tonumber(ARGV[5])
local rpm_tenant = tonumber(own[2]) or tonumber(ARGV[7])
local verdict = 0
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then verdict = 1
elseif redis.call('ZCARD', KEYS[2]) >= max_tenant then verdict = 2
elseif tonumber(redis.call('GET', KEYS[3]) or '0') >= tonumber(ARGV[6]) then verdict = 3
elseif tonumber(redis.call('GET', KEYS[4]) or '0') >= rpm_tenant then verdict = 4
end
if verdict ~= 0 then
  local age = ''
  if verdict <= 2 then
    local oldest = redis.call('ZRANGE', KEYS[verdict], 0, 0, 'WITHSCORES')
    if oldest[2] then age = tostring(tonumber(ARGV[2]) - tonumber(oldest[2])) end  -- its lease_until less ours
  end
  return {verdict, redis.call('GET', KEYS[6]) or '', age}
end
if ARGV[8] == '1' then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
  redis.call('EXPIRE', KEYS[1], 3600)
  redis.call('EXPIRE', KEYS[2], 3600)
  redis.call('INCR', KEYS[3])
  redis.call('EXPIRE', KEYS[3], 120)
  redis.call('INCR', KEYS[4])
  redis.call('EXPIRE', KEYS[4], 120)
end
return {0, '', ''}
"""

# KEYS: inflight_all, inflight_tenant, call_seconds; ARGV: member, the call's seconds
_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local seconds = tonumber(ARGV[2])
local mean = tonumber(redis.call('GET', KEYS[3]) or ARGV[2])
redis.call('SET', KEYS[3], tostring(mean * 0.8 + seconds * 0.2), 'EX', 3600)
return 1
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
    wait_timeout: float  # longest a call looks again for a turn in its worker thread before raising LLMBusy
    lease: float  # longest a call may hold its slot (its total deadline plus a margin)


def retry_in(verdict: int, *, now: float, call_seconds: float | None, oldest_age: float | None = None) -> float:
    """Seconds until a turn is likely under the limit ``verdict`` names (see the module's docstring)."""
    if verdict in (3, 4):  # per minute: the count starts again with the next minute
        likely = 60.0 - now % 60.0
    else:  # in flight: a slot frees when the oldest call ends
        likely = (call_seconds if call_seconds is not None else DEFAULT_CALL_SECONDS) - (oldest_age or 0.0)
    return min(max(likely, MIN_RETRY_IN), MAX_RETRY_IN)


class LLMLimiter:
    def __init__(self, client: redis.Redis, limits: Limits) -> None:
        self.client = client
        self.limits = limits
        self._script = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)

    @contextmanager
    def turn(self, tenant_id: uuid.UUID, *, stop: threading.Event | None = None) -> Iterator[float]:
        """Hold a slot for one LLM call; yields how long it waited for it (seconds). Raises ``LLMBusy`` when no
        turn came within ``wait_timeout``, ``Cancelled`` when ``stop`` is set meanwhile."""
        member, waited = self._acquire(tenant_id, stop)
        started = time.monotonic()
        try:
            yield waited
        finally:
            try:
                self._release(
                    keys=[self._inflight(None), self._inflight(tenant_id), CALL_SECONDS],
                    args=[member, round(time.monotonic() - started, 3)],
                )
            except redis.RedisError:  # the lease lapses on its own
                logger.warning("could not release an LLM slot; it lapses in %.0f s", self.limits.lease)

    def check(self, tenant_id: uuid.UUID) -> None:
        """Raise ``LLMBusy`` when a call of this tenant would find no turn now (nothing is taken): a job looks
        before work it would otherwise redo when it is sent again."""
        verdict, mean, age = self._run(tenant_id, member="", take=False)
        if verdict:
            raise self._busy(verdict, mean, age)

    def set_tenant_limits(self, tenant_id: uuid.UUID, *, concurrency: int | None, rpm: int | None) -> None:
        """Give a tenant its own limits in place of ``tenant_concurrency`` and ``tenant_rpm`` (``None``: the
        default again)."""
        key = self._tenant_limits(tenant_id)
        for field, value in (("concurrency", concurrency), ("rpm", rpm)):
            if value is None:
                self.client.hdel(key, field)
            else:
                self.client.hset(key, field, value)

    def _acquire(self, tenant_id: uuid.UUID, stop: threading.Event | None) -> tuple[str, float]:
        limits, started = self.limits, time.monotonic()
        member = secrets.token_hex(8)
        tries = 0
        while True:
            verdict, mean, age = self._run(tenant_id, member=member, take=True)
            waited = time.monotonic() - started
            if verdict == 0:
                if waited > 0.5:
                    logger.info("tenant_id=%s waited %.1f s for an LLM slot", tenant_id, waited)
                return member, waited
            if waited >= limits.wait_timeout:
                raise self._busy(verdict, mean, age)
            pause = min(backoff.delay(tries, base=0.05, cap=0.5), limits.wait_timeout - waited)
            tries += 1
            if stop is not None and stop.wait(pause):
                raise Cancelled("cancelled by request")
            if stop is None:
                time.sleep(pause)

    def _run(self, tenant_id: uuid.UUID, *, member: str, take: bool) -> tuple[int, float | None, float | None]:
        """One run of the script: the verdict; when a limit was reached, the mean call time and (an in-flight
        limit) the age of the oldest call in flight."""
        limits, now = self.limits, time.time()
        minute = int(now // 60)
        verdict, mean, age = self._script(
            keys=[
                self._inflight(None),
                self._inflight(tenant_id),
                f"{PREFIX}:rpm:all:{minute}",
                f"{PREFIX}:rpm:{tenant_id}:{minute}",
                self._tenant_limits(tenant_id),
                CALL_SECONDS,
            ],
            args=[
                now,
                now + limits.lease,
                member,
                limits.concurrency,
                limits.tenant_concurrency,
                limits.rpm,
                limits.tenant_rpm,
                "1" if take else "0",
            ],
        )
        return int(verdict), (float(mean) if mean else None), (float(age) if age else None)

    @staticmethod
    def _busy(verdict: int, mean: float | None, age: float | None) -> LLMBusy:
        limit = _REASONS[verdict]
        return LLMBusy(
            f"waiting for a turn at the LLM (limit: {limit})",
            retry_in=retry_in(verdict, now=time.time(), call_seconds=mean, oldest_age=age),
            limit=limit,
        )

    @staticmethod
    def _inflight(tenant_id: uuid.UUID | None) -> str:
        return f"{PREFIX}:inflight:{tenant_id or 'all'}"

    @staticmethod
    def _tenant_limits(tenant_id: uuid.UUID) -> str:
        return f"{PREFIX}:limits:{tenant_id}"
