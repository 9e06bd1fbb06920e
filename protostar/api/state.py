"""What the API process owns, built in the lifespan and closed with it: its clients (the same bundle the
workers build, :class:`protostar.bundle.Clients`), a session factory, the key cache and its metrics."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from threading import Lock

from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker

from protostar.auth import Principal
from protostar.bundle import Clients
from protostar.db.engine import make_sessionmaker
from protostar.jobs.broker import create_celery
from protostar.settings import Settings

logger = logging.getLogger(__name__)

AUTH_TTL = 30.0  # seconds a resolved key is trusted without asking the database (revocation delay)


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


@dataclass
class AppState:
    settings: Settings
    clients: Clients
    sessions: sessionmaker[Session]
    auth_cache: AuthCache
    metrics: CollectorRegistry = field(default_factory=CollectorRegistry)

    @classmethod
    def build(cls, settings: Settings) -> AppState:
        if not settings.redis_url:
            raise RuntimeError("PROTOSTAR_REDIS_URL is not set; start the stack with `protostar up`")
        clients = Clients(settings=settings, celery=create_celery(settings, role="api"), role="api")
        return cls(
            settings=settings, clients=clients, sessions=make_sessionmaker(clients.engine), auth_cache=AuthCache()
        )

    async def close(self) -> None:
        await self.clients.aclose()
