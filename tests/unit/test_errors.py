"""The error tree: every error carries the status and code callers see."""

from __future__ import annotations

import pytest

from protostar import errors
from protostar.backoff import delay as backoff


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (errors.ValidationFailed, 422, "validation_failed"),
        (errors.Unauthorized, 401, "unauthorized"),
        (errors.NotFound, 404, "not_found"),
        (errors.PayloadTooLarge, 413, "payload_too_large"),
        (errors.UnsupportedMediaType, 415, "unsupported_media_type"),
        (errors.BrokerUnavailable, 503, "broker_unavailable"),
        (errors.InputRejected, 422, "input_rejected"),
        (errors.PortInUse, 500, "port_in_use"),
    ],
)
def test_each_error_has_its_status_and_code(error: type[errors.ProtostarError], status: int, code: str) -> None:
    exc = error("why")
    assert (exc.status, exc.code, exc.message) == (status, code, "why")
    assert isinstance(exc, errors.ProtostarError)


def test_backoff_is_jittered_and_capped() -> None:
    delays = [backoff(attempt, base=2.0, cap=10.0) for attempt in range(1, 20) for _ in range(20)]
    assert all(0 <= d <= 10.0 for d in delays)
    assert len(set(delays)) > 100
