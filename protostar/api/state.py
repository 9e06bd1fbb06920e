"""What the API process owns, built in the lifespan and closed with it: its clients (the same bundle the
workers build, :class:`protostar.bundle.Clients`), a session factory, the key cache, its metrics, and the relay of
event streams with the tenants' stream leases (``api.hub``, ``api.leases``).

A resolved key is kept :data:`AUTH_TTL` seconds; a cache hit is trusted only when Redis holds no revocation
stamp for it (``protostar.auth.revoke_key`` sets one before it revokes the row), so a revoked key answers
``401`` on its next request in every API process. When Redis does not answer, the database decides. The
bootstrap key is not a row and cannot be revoked (change ``PROTOSTAR_BOOTSTRAP_API_KEY``).

:meth:`AppState.resolve` is what the guard calls on the event loop: the bootstrap key and a cache hit (its
stamp looked up with this state's own asyncio Redis client) are answered without a threadpool hop; a miss, a
stamp or an unanswering Redis go to :meth:`AppState.authenticate` in a thread, as before."""

from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass, field
from threading import Lock

import redis
import redis.asyncio as aioredis
from anyio import to_thread
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker

from protostar.api.deadline import Monitor
from protostar.api.hub import Hub
from protostar.api.leases import Leases
from protostar.api.rows import JobRows
from protostar.auth import Principal, bearer_key, bootstrap_principal, hash_key, resolve, revocation_stamp
from protostar.bundle import Clients
from protostar.db.engine import make_sessionmaker
from protostar.jobs.broker import create_celery
from protostar.settings import Settings

logger = logging.getLogger(__name__)

AUTH_TTL = 30.0  # seconds a resolved key is kept (a revocation stamp overrides it at once)


@dataclass
class AuthCache:
    ttl: float = AUTH_TTL
    _entries: dict[str, tuple[float, Principal]] = field(default_factory=dict)
    _lock: Lock = field(default_factory=Lock)

    def get(self, key_hash: str) -> Principal | None:
        entry = self._entries.get(key_hash)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key_hash: str, principal: Principal) -> None:
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[key_hash] = (time.monotonic() + self.ttl, principal)

    def drop(self, key_hash: str) -> None:
        with self._lock:
            self._entries.pop(key_hash, None)


@dataclass
class AppState:
    settings: Settings
    clients: Clients
    sessions: sessionmaker[Session]
    metrics: CollectorRegistry = field(default_factory=CollectorRegistry)
    auth_cache: AuthCache = field(default_factory=AuthCache)
    monitor: Monitor | None = None  # which dependencies answer, for the request deadline (api.deadline)
    hub: Hub | None = None  # the one relay of every event stream (api.hub), started in the lifespan
    leases: Leases | None = None  # the tenants' open streams (api.leases)
    job_rows: JobRows | None = None  # quiet streams' looks at their job rows, one query for all (api.rows)
    _bootstrap: Principal | None = None
    _stamps: aioredis.Redis | None = None  # revocation stamps, looked up on the event loop (:meth:`resolve`)

    @classmethod
    def build(cls, settings: Settings) -> AppState:
        if not settings.redis_url:
            raise RuntimeError("PROTOSTAR_REDIS_URL is not set; start the stack with `protostar up`")
        clients = Clients(settings=settings, celery=create_celery(settings, role="api"), role="api")
        return cls(settings=settings, clients=clients, sessions=make_sessionmaker(clients.engine))

    def authenticate(self, header: str) -> Principal:
        """The principal of an ``Authorization`` header; raises ``Unauthorized``. Blocking: call it in a thread."""
        raw = bearer_key(header)
        bootstrap = self.settings.bootstrap_api_key
        if bootstrap is not None and hmac.compare_digest(raw.encode(), bootstrap.get_secret_value().encode()):
            if self._bootstrap is None:
                with self.sessions.begin() as session:
                    self._bootstrap = bootstrap_principal(session)
            return self._bootstrap
        key_hash = hash_key(raw)
        cached = self.auth_cache.get(key_hash)
        if cached is not None and not self._stamped(key_hash):
            return cached
        self.auth_cache.drop(key_hash)
        with self.sessions() as session:
            principal = resolve(session, raw)
        self.auth_cache.put(key_hash, principal)
        return principal

    async def resolve(self, header: str) -> Principal:
        """:meth:`authenticate` for the event loop: no threadpool hop for the bootstrap key once known, nor for a
        cached key that Redis says has no revocation stamp; anything else is asked in a thread."""
        raw = bearer_key(header)
        bootstrap = self.settings.bootstrap_api_key
        if bootstrap is not None and hmac.compare_digest(raw.encode(), bootstrap.get_secret_value().encode()):
            if self._bootstrap is not None:
                return self._bootstrap
        else:
            key_hash = hash_key(raw)
            cached = self.auth_cache.get(key_hash)
            if cached is not None and not await self._stamped_async(key_hash):
                return cached
        return await to_thread.run_sync(self.authenticate, header)

    async def _stamped_async(self, key_hash: str) -> bool:
        """:meth:`_stamped` on the event loop (``True`` when Redis cannot tell: then the database decides)."""
        if self._stamps is None:
            assert self.settings.redis_url
            timeout = self.settings.broker_connect_timeout
            self._stamps = aioredis.Redis.from_url(
                self.settings.redis_url,
                socket_connect_timeout=timeout,
                socket_timeout=max(timeout, self.settings.dependency_timeout),
                max_connections=50,
            )
        try:
            return bool(await self._stamps.exists(revocation_stamp(key_hash)))
        except (redis.RedisError, OSError) as exc:
            logger.warning("revocation stamps unavailable, asking the database: %s", exc)
            return True

    def _stamped(self, key_hash: str) -> bool:
        """Whether the key may have been revoked since it was cached (``True`` when Redis cannot tell)."""
        try:
            return bool(self.clients.redis.exists(revocation_stamp(key_hash)))
        except redis.RedisError as exc:
            logger.warning("revocation stamps unavailable, asking the database: %s", exc)
            return True

    async def start_streams(self) -> None:
        """The event relay and the stream leases; their Redis connections are their own."""
        assert self.settings.redis_url
        timeout = max(self.settings.broker_connect_timeout, self.settings.dependency_timeout)
        self.hub = Hub(
            self.settings.redis_url, connect_timeout=self.settings.broker_connect_timeout, read_timeout=timeout
        )
        await self.hub.start()
        self.leases = Leases(self.settings.tenant_max_streams)
        self.leases.start(self.hub.redis)
        self.job_rows = JobRows(self.sessions)

    async def close(self) -> None:
        if self.leases is not None:
            await self.leases.stop()
        if self.hub is not None:
            await self.hub.stop()
        if self._stamps is not None:
            await self._stamps.aclose()
        await self.clients.aclose()
