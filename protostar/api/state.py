"""What the API process owns, built in the lifespan and closed with it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from threading import Lock
from typing import TYPE_CHECKING

import redis
import redis.asyncio as aioredis
from celery import Celery
from minio import Minio
from prometheus_client import CollectorRegistry
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from protostar.auth import Principal
from protostar.celery_app import create_celery
from protostar.db.engine import make_engine, make_sessionmaker
from protostar.jobs.dispatch import Dispatcher
from protostar.jobs.events import EventLog
from protostar.settings import Settings
from protostar.storage import make_minio

if TYPE_CHECKING:
    from protostar.ingest.embed import Embedder

logger = logging.getLogger(__name__)

AUTH_TTL = 30.0  # seconds a resolved key is trusted without asking the database (revocation delay)


STREAM_READ_TIMEOUT = 30.0  # seconds; must exceed protostar.api.sse.IDLE_MS


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


API_THREADS = 40  # anyio's default threadpool, which FastAPI runs sync routes and dependencies in


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    redis: redis.Redis
    aredis: aioredis.Redis
    celery: Celery
    dispatcher: Dispatcher
    minio: Minio
    auth_cache: AuthCache
    metrics: CollectorRegistry = field(default_factory=CollectorRegistry)
    _embedder: Embedder | None = None
    _embedder_lock: Lock = field(default_factory=Lock)

    def embedder(self) -> Embedder:
        """The query embedder, loaded on first use (the lifespan starts loading it in the background)."""
        if self._embedder is None:
            with self._embedder_lock:
                if self._embedder is None:
                    from protostar.ingest.embed import make_embedder

                    embedder = make_embedder(self.settings)
                    embedder.embed(["warm-up"])
                    self._embedder = embedder
        return self._embedder

    @classmethod
    def build(cls, settings: Settings) -> AppState:
        if not settings.redis_url:
            raise RuntimeError("PROTOSTAR_REDIS_URL is not set; start the stack with `protostar up`")
        timeout = settings.broker_connect_timeout
        # A connection for each threadpool worker (where every sync route and dependency runs), kept open: a
        # smaller pool opened and closed overflow connections under load (0.17 per request, bench.dispatch).
        engine = make_engine(settings, pool_size=API_THREADS, max_overflow=10)
        client = redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=timeout, socket_timeout=max(timeout, 2.0), max_connections=200
        )
        # A pooled connection can be dead after a Redis restart: retry once on a fresh one before failing.
        aclient = aioredis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=timeout,
            # Above the SSE relay's blocking XREAD (10 s): redis-py's default (5 s) cut quiet streams.
            socket_timeout=STREAM_READ_TIMEOUT,
            retry=AsyncRetry(ExponentialBackoff(cap=0.5, base=0.05), 3),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
        celery = create_celery(settings, role="api")
        events = EventLog(client, ttl=settings.events_ttl, maxlen=settings.events_maxlen)
        return cls(
            settings=settings,
            engine=engine,
            sessions=make_sessionmaker(engine),
            redis=client,
            aredis=aclient,
            celery=celery,
            dispatcher=Dispatcher(celery=celery, engine=engine, events=events, settings=settings),
            minio=make_minio(settings),
            auth_cache=AuthCache(),
        )

    async def close(self) -> None:
        await self.aredis.aclose()
        self.redis.close()
        self.engine.dispose()
