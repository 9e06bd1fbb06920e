"""Engines are built by whoever owns a process: the API in its lifespan, a worker after fork.

No ``pool_pre_ping``: it cost a round trip on every checkout. A connection is replaced after ``pool_recycle``
seconds, and one found dead when used (PostgreSQL restarted, say) fails that statement with an
``OperationalError``, which the API answers ``503`` and a task retries as a dependency's failure
(``jobs.faults``); SQLAlchemy then invalidates it and every connection of the pool opened before, so the next
checkouts connect afresh. The API's readiness pings (``api.deadline.Monitor``, every 0.25 s) usually meet a
dead connection first."""

from __future__ import annotations

import gc
import math

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, configure_mappers, sessionmaker

from protostar.errors import ServiceError
from protostar.settings import Settings


def make_engine(
    settings: Settings,
    *,
    pool_size: int = 5,
    max_overflow: int | None = None,
    wait: float | None = None,
    pre_ping: bool = False,
) -> Engine:
    """``pool_size`` connections are kept; up to ``max_overflow`` (default: as many) more are opened when all are
    busy and closed on return, so a pool smaller than its users' concurrency opens a connection per burst.
    ``wait``: the longest wait for a pooled connection and for a new one to connect (default 30 s and 5 s).
    ``pre_ping``: a ``SELECT 1`` before each checkout, for observers that must never see a dead connection (the
    tests' and benchmarks' own engines, which restart PostgreSQL under themselves); never the product's."""
    if not settings.database_url:
        raise ServiceError("PROTOSTAR_DATABASE_URL is not set; start the stack with `protostar up`")
    return create_engine(
        settings.database_url,
        pool_size=pool_size,
        max_overflow=pool_size if max_overflow is None else max_overflow,
        pool_pre_ping=pre_ping,  # see the module's docstring
        pool_recycle=1800,
        pool_timeout=30.0 if wait is None else wait,
        # libpq counts whole seconds and treats 1 as 2
        connect_args={"connect_timeout": 5 if wait is None else max(math.ceil(wait), 2), "options": _OPTIONS},
    )


_OPTIONS = "-c statement_timeout=30000"


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def ping(engine: Engine) -> None:
    """One round trip to the database (readiness)."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def settle_heap() -> None:
    """Once a long-running process has imported and built what it keeps (the API after its startup, a worker
    before its pool forks): the ORM's mappers configured (else the first request or job does it) and every
    object so far frozen out of the garbage collector (``gc.freeze``). A full collection walks every tracked
    object, everything imported included; the collector runs one whenever enough new objects survived, so
    under load that walk was part of the cost of requests and jobs, and a frozen heap is not walked. The price:
    an object frozen here that later becomes garbage in a reference cycle is never freed (a bounded, one-time
    amount: what was alive at this moment), so call it once startup is done, not per request."""
    configure_mappers()
    gc.collect()
    gc.freeze()
