"""The shell's retry budgets are counted per reason on the message, so waits of one kind (PostgreSQL down at
claim) cannot use up the budget of another (a takeover of a busy job): that mix once dropped a message and left
its job ``running`` in the PostgreSQL restart test."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from protostar.errors import LLMBusy
from protostar.worker.shell import RETRIES_HEADER, TURN_SPREAD_CAP, WAITED_HEADER, _retried, _send_again, _turn_wait


class Sent(Exception):
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options


class FakeTask:
    def __init__(self, retries: int, counts: dict[str, int] | None = None) -> None:
        headers = {RETRIES_HEADER: counts} if counts is not None else None
        self.request = SimpleNamespace(id="job", retries=retries, headers=headers)

    def retry(self, **options: Any) -> Sent:
        return Sent(options)


def test_each_reason_has_its_own_count() -> None:
    task = FakeTask(retries=4, counts={"claim": 3, "transient": 1})
    assert _retried(task, "claim") == 3  # type: ignore[arg-type]
    assert _retried(task, "busy") == 0  # type: ignore[arg-type]
    with pytest.raises(Sent) as sent:
        _send_again(task, "busy", countdown=1.0, cap=4)  # type: ignore[arg-type]
    options = sent.value.options
    assert options["headers"][RETRIES_HEADER] == {"claim": 3, "transient": 1, "busy": 1}
    assert options["max_retries"] > task.request.retries  # Celery's own cap never drops the message
    assert options["countdown"] == 1.0


def test_past_its_cap_the_message_is_not_sent_again() -> None:
    task = FakeTask(retries=9, counts={"busy": 4})
    assert _send_again(task, "busy", countdown=1.0, cap=4) is None  # type: ignore[arg-type,func-returns-value]


def test_a_first_delivery_has_no_counts() -> None:
    task = FakeTask(retries=0)
    assert _retried(task, "transient") == 0  # type: ignore[arg-type]
    with pytest.raises(Sent) as sent:
        _send_again(task, "transient", countdown=2.0, cap=3)  # type: ignore[arg-type]
    assert sent.value.options["headers"] == {RETRIES_HEADER: {"transient": 1}}


def test_a_wait_for_a_turn_is_at_least_its_retry_in_and_adds_up_on_the_message() -> None:
    busy = LLMBusy("waiting for a turn at the LLM (limit: calls per minute, this tenant)", retry_in=12.0, limit="x")
    first = FakeTask(retries=0)
    assert all(_turn_wait(first, busy)[0] == 0.0 for _ in range(20))  # type: ignore[arg-type]
    countdowns = [_turn_wait(first, busy)[1] for _ in range(200)]  # type: ignore[arg-type]
    assert all(12.0 <= c <= 12.0 + 1.0 for c in countdowns)  # jitter: up to 1 s on the first wait
    later = FakeTask(retries=9, counts={"throttled": 9})
    later.request.headers[WAITED_HEADER] = 300.0
    waited, countdown = _turn_wait(later, busy)  # type: ignore[arg-type]
    assert waited == 300.0 and 12.0 <= countdown <= 12.0 + TURN_SPREAD_CAP
    with pytest.raises(Sent) as sent:
        _send_again(later, "throttled", countdown=countdown, cap=100, carry={WAITED_HEADER: waited + countdown})  # type: ignore[arg-type]
    assert sent.value.options["headers"][WAITED_HEADER] == waited + countdown
    assert sent.value.options["headers"][RETRIES_HEADER] == {"throttled": 10}
