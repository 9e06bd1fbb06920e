"""The API's one renderer: a dependency that is down answers 503 naming it (never 500, never its text)."""

from __future__ import annotations

import json

import pytest
import redis
import urllib3
from sqlalchemy.exc import OperationalError

from protostar.api.errors import render


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (urllib3.exceptions.MaxRetryError(None, "/bucket/secret-key", None), "object_store_unavailable"),
        (OperationalError("SELECT secret", {}, Exception("connection refused")), "database_unavailable"),
        (redis.ConnectionError("Error 111 connecting to 10.0.0.5:6379"), "redis_unavailable"),
        # Full at its maxmemory (noeviction): a write fails until memory is freed; the caller is told to retry.
        (redis.exceptions.OutOfMemoryError("OOM command not allowed, secret key"), "redis_unavailable"),
    ],
)
def test_an_unavailable_dependency_is_a_503_naming_it(error: Exception, code: str) -> None:
    response = render(error)
    body = json.loads(bytes(response.body))
    assert response.status_code == 503
    assert body["error"]["code"] == code
    assert body["error"]["message"].endswith("is unavailable; try again")
    assert "secret" not in body["error"]["message"] and "10.0.0.5" not in body["error"]["message"]


def test_anything_else_is_an_internal_error_without_its_text() -> None:
    response = render(ValueError("SELECT * FROM secret"))
    assert response.status_code == 500
    assert "secret" not in bytes(response.body).decode()
