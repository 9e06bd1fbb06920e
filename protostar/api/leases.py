"""A tenant's open event streams, counted across API processes: a Redis sorted set of leases per tenant.

Opening a stream takes a lease (``protostar:streams:<tenant id>``, member a random id, score the lease's expiry)
in one script that first drops expired leases, so the count is the tenant's live streams in every API process.
At ``PROTOSTAR_TENANT_MAX_STREAMS`` the route answers ``429`` with ``Retry-After`` before any byte is sent.

A lease lives :data:`LEASE_TTL` seconds unless renewed: one task per process renews every lease whose stream
touched it lately (each stream does at least every keep-alive), and removes released ones at once. A stream
that ends releases its lease synchronously (in memory, safe under cancellation); an API process that dies
leaves leases that expire within :data:`LEASE_TTL`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis

from protostar.errors import TooManyRequests

logger = logging.getLogger(__name__)

PREFIX = "protostar:streams:"
LEASE_TTL = 30.0  # seconds a lease lasts without renewal
RENEW_EVERY = 10.0  # seconds between renewals
RETRY_AFTER = 5  # seconds a refused caller is asked to wait

_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


@dataclass(eq=False)
class Lease:
    key: str
    member: str
    touched: float = field(default_factory=time.monotonic)

    def touch(self) -> None:
        self.touched = time.monotonic()


class Leases:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, Lease] = {}
        self._released: list[Lease] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: aioredis.Redis | None = None

    def start(self, client: aioredis.Redis) -> None:
        self._client = client
        self._task = asyncio.create_task(self._keep(), name="stream-leases")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(redis.RedisError, OSError):  # best effort; they expire anyway
            await self._flush([*self._released, *self._held.values()])

    async def acquire(self, tenant_id: uuid.UUID) -> Lease:
        """A lease on one of the tenant's stream slots; :class:`TooManyRequests` when all are taken."""
        assert self._client is not None, "leases not started"
        lease = Lease(f"{PREFIX}{tenant_id}", uuid.uuid4().hex)
        now = time.time()
        args: list[str | float] = [now, now + LEASE_TTL, lease.member, self.limit, int(LEASE_TTL) + 1]
        taken: Any = await self._client.eval(_ACQUIRE, 1, lease.key, *args)
        if not int(taken):
            raise TooManyRequests(
                f"this tenant has {self.limit} event streams open (PROTOSTAR_TENANT_MAX_STREAMS); close one or "
                "try again later",
                retry_after=RETRY_AFTER,
            )
        self._held[lease.member] = lease
        return lease

    def release(self, lease: Lease) -> None:
        """Give the slot back (synchronous: safe in a cancelled stream's cleanup); removed from Redis at once."""
        if self._held.pop(lease.member, None) is not None:
            self._released.append(lease)
            self._changed.set()

    @property
    def held(self) -> int:
        return len(self._held)

    async def _keep(self) -> None:
        next_renewal = time.monotonic() + RENEW_EVERY
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(0.0, next_renewal - time.monotonic()))
            self._changed.clear()
            try:
                released, self._released = self._released, []
                if released:
                    await self._flush(released)
                if time.monotonic() >= next_renewal:
                    next_renewal = time.monotonic() + RENEW_EVERY
                    await self._renew()
            except (redis.RedisError, OSError) as exc:  # next round; unrenewed leases expire, which frees slots
                logger.warning("stream leases: Redis unavailable (%s)", type(exc).__name__)
                self._released.extend(released)
                await asyncio.sleep(1.0)

    async def _renew(self) -> None:
        """Extend the leases of live streams; forget those whose stream stopped touching them (never started)."""
        assert self._client is not None
        stale_before = time.monotonic() - LEASE_TTL
        stale = [lease for lease in self._held.values() if lease.touched < stale_before]
        for lease in stale:
            self._held.pop(lease.member, None)
        if stale:
            await self._flush(stale)
        expires = time.time() + LEASE_TTL
        pipe = self._client.pipeline(transaction=False)
        for lease in list(self._held.values()):
            pipe.zadd(lease.key, {lease.member: expires}, xx=True)
            pipe.expire(lease.key, int(LEASE_TTL) + 1)
        await pipe.execute()

    async def _flush(self, leases: list[Lease]) -> None:
        if not leases or self._client is None:
            return
        pipe = self._client.pipeline(transaction=False)
        for lease in leases:
            pipe.zrem(lease.key, lease.member)
        await pipe.execute()
