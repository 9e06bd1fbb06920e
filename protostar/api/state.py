"""What the API process owns, built in the lifespan and closed with it: its clients (the same bundle the
workers build, :class:`protostar.clients.Clients`), a session factory, the bootstrap key's principal and its
metrics.

Keys are looked up in the database on every request (one read by a unique index; every authenticated route
reads the database anyway), so a revoked key answers ``401`` at once in every API process. Only the bootstrap
key's principal is kept: it is not a row and cannot be revoked (change ``PROTOSTAR_BOOTSTRAP_API_KEY``)."""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker

from protostar.auth import Principal, bearer_key, bootstrap_principal, resolve
from protostar.clients import Clients
from protostar.db.engine import make_sessionmaker
from protostar.jobs.broker import create_celery
from protostar.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class AppState:
    settings: Settings
    clients: Clients
    sessions: sessionmaker[Session]
    metrics: CollectorRegistry = field(default_factory=CollectorRegistry)
    _bootstrap: Principal | None = None

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
        with self.sessions() as session:
            return resolve(session, raw)

    async def close(self) -> None:
        await self.clients.aclose()
