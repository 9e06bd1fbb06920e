"""How a job ended, and the events that tell its followers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protostar.constants import EventType, JobStatus


@dataclass(frozen=True)
class Ending:
    status: JobStatus
    code: str | None = None
    message: str | None = None
    result: dict[str, Any] | None = None

    def events(self) -> list[tuple[EventType, dict[str, Any]]]:
        """The events that close a job's stream: its last status, an ``error`` when it failed, then ``done``."""
        return final_events(self.status, self.code, self.message)


def final_events(
    status: JobStatus, code: str | None = None, message: str | None = None
) -> list[tuple[EventType, dict[str, Any]]]:
    events: list[tuple[EventType, dict[str, Any]]] = [(EventType.STATUS, {"status": status.value})]
    if code and status == JobStatus.FAILED:
        events.append((EventType.ERROR, {"code": code, "message": message}))
    events.append((EventType.DONE, {"status": status.value}))
    return events
