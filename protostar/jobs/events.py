"""A job's events live in one Redis Stream per job; the stream entry id is the SSE event id.

Workers (and the API, for ``queued``) append with :class:`EventLog`; the SSE route replays from the client's
``Last-Event-ID`` with XREAD, which is exclusive of the id given, so a resumed stream has no loss and no
repeats, then follows through the API process's one relay (``protostar.api.hub``). A stream expires
``events_ttl`` seconds after its last event.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from redis.client import Pipeline

from protostar.constants import EventType

PREFIX = "protostar:events:"
CANCEL_PREFIX = "protostar:cancel:"


def stream_key(job_id: uuid.UUID | str) -> str:
    return f"{PREFIX}{job_id}"


def cancel_key(job_id: uuid.UUID | str) -> str:
    """Set by the API when a running job is cancelled; the worker's watcher polls it (the DB flag is the truth)."""
    return f"{CANCEL_PREFIX}{job_id}"


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    data: dict[str, Any]

    @property
    def final(self) -> bool:
        return self.type == EventType.DONE


@dataclass
class EventLog:
    """Appends events; built once per process around that process's own Redis client."""

    client: redis.Redis
    ttl: int
    maxlen: int

    def publish(self, job_id: uuid.UUID | str, type_: EventType, data: dict[str, Any]) -> str:
        return self.publish_many(job_id, [(type_, data)])[0]

    def publish_many(self, job_id: uuid.UUID | str, events: list[tuple[EventType, dict[str, Any]]]) -> list[str]:
        pipe = self.client.pipeline(transaction=False)
        self.append(pipe, job_id, events)
        replies = pipe.execute()
        return [_text(r) for r in replies[: len(events)]]

    def append(self, pipe: Pipeline, job_id: uuid.UUID | str, events: list[tuple[EventType, dict[str, Any]]]) -> None:
        """Queue the events' appends (and the stream's new TTL) on ``pipe``: one reply per event, then the TTL's."""
        key = stream_key(job_id)
        for type_, data in events:
            pipe.xadd(key, {"type": type_.value, "data": json.dumps(data)}, maxlen=self.maxlen, approximate=True)
        pipe.expire(key, self.ttl)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def decode(entry_id: bytes | str, fields: dict[Any, Any]) -> Event:
    """An event from a stream entry as XREAD answers it (bytes or text)."""
    decoded = {_text(k): _text(v) for k, v in fields.items()}
    return Event(id=_text(entry_id), type=decoded["type"], data=json.loads(decoded["data"]))
