"""Which failures are the infrastructure's: they make a job retry, with a reason that names the dependency."""

from __future__ import annotations

import psycopg
import pytest
import redis
import urllib3
from minio.error import S3Error, ServerError
from sqlalchemy import exc as sa

from protostar.errors import BrokerUnavailable, InputRejected, LLMFailed, Transient
from protostar.jobs.faults import as_transient, dependency

SECRET = "postgresql://user:hunter2@db.internal:5432/protostar"


def _wrapped(cause: BaseException) -> RuntimeError:
    try:
        raise cause
    except BaseException as exc:
        try:
            raise RuntimeError("wrapped by a library") from exc
        except RuntimeError as outer:
            return outer


@pytest.mark.parametrize(
    ("error", "name"),
    [
        (redis.ConnectionError(f"Error 111 connecting to {SECRET}"), "Redis"),
        (redis.TimeoutError("Timeout reading from socket"), "Redis"),
        (redis.exceptions.OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'"), "Redis"),
        (BrokerUnavailable("the task queue is unavailable"), "Redis"),
        (sa.OperationalError("SELECT 1", {}, psycopg.OperationalError(SECRET)), "PostgreSQL"),
        (sa.TimeoutError("QueuePool limit of size 5 overflow 5 reached"), "PostgreSQL"),
        (sa.DBAPIError("SELECT 1", {}, Exception("server closed"), connection_invalidated=True), "PostgreSQL"),
        (psycopg.OperationalError("connection refused"), "PostgreSQL"),
        (urllib3.exceptions.MaxRetryError(None, "/bucket/key", "refused"), "the object store"),  # type: ignore[arg-type]
        (urllib3.exceptions.ProtocolError("Connection aborted."), "the object store"),
        (ServerError("server failed with HTTP status code 503", 503), "the object store"),
        (_wrapped(redis.ConnectionError("lost")), "Redis"),
    ],
)
def test_an_unavailable_dependency_is_transient_and_named(error: Exception, name: str) -> None:
    assert dependency(error) == name
    transient = as_transient(error)
    assert isinstance(transient, Transient)
    assert transient.message == f"{name} unavailable"  # never the exception's text (hosts, SQL, keys)
    assert "hunter2" not in transient.message


def test_an_s3_error_is_transient_only_when_the_store_is_busy() -> None:
    def s3(code: str) -> S3Error:
        return S3Error(None, code, "message", "/bucket/key", "request", "host")  # type: ignore[arg-type]

    assert dependency(s3("SlowDown")) == "the object store"
    assert dependency(s3("NoSuchKey")) is None


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bad input"),
        sa.IntegrityError("INSERT", {}, Exception("duplicate key")),
        InputRejected("the document is empty"),
        LLMFailed("the LLM refused"),
    ],
)
def test_other_failures_are_not_transient(error: Exception) -> None:
    assert as_transient(error) is None


def test_a_typed_error_raised_while_handling_a_lost_connection_keeps_its_decision() -> None:
    try:
        try:
            raise redis.ConnectionError("lost")
        except redis.ConnectionError:
            raise InputRejected("the document was deleted") from None
    except InputRejected as exc:
        assert as_transient(exc) is None


def test_a_transient_error_is_itself() -> None:
    error = Transient("waited 30 s for a turn at the LLM")
    assert as_transient(error) is error


def test_an_error_raised_while_handling_a_lost_connection_is_not_its_doing() -> None:
    try:
        try:
            raise redis.ConnectionError("lost")
        except redis.ConnectionError:
            raise ValueError("a bug in the fallback")  # noqa: B904 (the point of the test)
    except ValueError as exc:
        assert as_transient(exc) is None
