"""Which failures are the infrastructure's, not the job's: a timeout or a lost connection to PostgreSQL, Redis or
the object store. Such a failure says nothing about the job's input, so the task shell retries the job (capped,
with backoff) instead of failing it, and the job's reason names the dependency ("PostgreSQL unavailable"), never
the exception's text, which may carry hosts, SQL or keys.

    dependency(exc)    "PostgreSQL" | "Redis" | "the object store" | None
    as_transient(exc)  Transient("PostgreSQL unavailable") | None

The exception's causes are looked at too (``raise ... from``), so a library that wraps a lost connection in its own
error type is still recognised; our own typed errors are taken as they are.
"""

from __future__ import annotations

import psycopg
import redis
import urllib3
from minio.error import S3Error, ServerError
from sqlalchemy import exc as sa

from protostar.errors import BrokerUnavailable, ProtostarError, Transient

POSTGRES = "PostgreSQL"
REDIS = "Redis"
OBJECT_STORE = "the object store"

_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.OutOfMemoryError, BrokerUnavailable)

# S3 error codes that mean "the store is busy or broken now", not "your request is wrong".
_S3_TRANSIENT_CODES = frozenset({"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"})


def _own(exc: BaseException) -> str | None:
    """The dependency ``exc`` itself reports as unavailable, ignoring its causes."""
    # OutOfMemoryError: Redis is full at its maxmemory (noeviction): writes fail until memory is freed.
    if isinstance(exc, _REDIS_DOWN):
        return REDIS
    if isinstance(exc, sa.OperationalError | sa.TimeoutError | psycopg.OperationalError):
        return POSTGRES  # OperationalError: connection lost or refused, statement timeout, deadlock
    if isinstance(exc, sa.DBAPIError) and exc.connection_invalidated:
        return POSTGRES
    if isinstance(exc, urllib3.exceptions.HTTPError | ServerError):
        return OBJECT_STORE  # urllib3: refused, reset, timed out, retries spent on 5xx; ServerError: a 5xx
    if isinstance(exc, S3Error) and exc.code in _S3_TRANSIENT_CODES:
        return OBJECT_STORE
    return None


def dependency(exc: BaseException) -> str | None:
    """Which dependency's unavailability ``exc`` (or one of its causes) reports, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if (name := _own(current)) is not None:
            return name
        current = current.__cause__  # explicit chaining only: an error raised while handling one is not its doing
    return None


def as_transient(exc: BaseException) -> Transient | None:
    """``exc`` as the job's transient failure when it is the infrastructure's, else ``None``. Our own typed
    errors have decided already (an ``InputRejected`` raised while handling a lost connection stays rejected)."""
    if isinstance(exc, Transient):
        return exc
    if isinstance(exc, ProtostarError) and not isinstance(exc, BrokerUnavailable):
        return None
    name = dependency(exc)
    return Transient(f"{name} unavailable") if name else None
