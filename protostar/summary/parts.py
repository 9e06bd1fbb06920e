"""The finished parts of a summary job's map-reduce, kept across its deliveries so none is made twice.

A summary makes many LLM calls; between two of them it may find no turn at the LLM (``LLMBusy``), and the job
is sent again later rather than holding its worker thread. The next delivery packs the same input into the same
groups, so each group's summary is kept, keyed by a hash of its instructions and text, in a Redis hash per job
(``protostar:summary:parts:<job_id>``, expiring ``ttl`` seconds after the last part). A part of another input
(a session that got new messages meanwhile) has another key and is simply not found.

The parts are a cache, not the record: when Redis cannot keep or give one, the call is made again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field

import redis

logger = logging.getLogger(__name__)

PREFIX = "protostar:summary:parts"


@dataclass(frozen=True)
class Part:
    text: str
    usage: dict[str, int] = field(default_factory=dict)


class Parts:
    def __init__(self, client: redis.Redis, *, job_id: uuid.UUID, ttl: int) -> None:
        self.client, self.job_id, self.ttl = client, job_id, ttl
        self.key = f"{PREFIX}:{job_id}"

    def get(self, instructions: str, text: str) -> Part | None:
        try:
            raw = self.client.hget(self.key, _field(instructions, text))
        except redis.RedisError as exc:
            logger.warning("job_id=%s summary part not read, Redis unavailable: %s", self.job_id, exc)
            return None
        if raw is None:
            return None
        stored = json.loads(raw)
        return Part(text=stored["text"], usage=stored.get("usage") or {})

    def put(self, instructions: str, text: str, part: Part) -> None:
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(self.key, _field(instructions, text), json.dumps({"text": part.text, "usage": part.usage}))
                pipe.expire(self.key, self.ttl)
                pipe.execute()
        except redis.RedisError as exc:
            logger.warning("job_id=%s summary part not kept, Redis unavailable: %s", self.job_id, exc)

    def clear(self) -> None:
        """Forget the parts once the summary is written."""
        try:
            self.client.delete(self.key)
        except redis.RedisError as exc:  # they expire on their own
            logger.warning("job_id=%s summary parts not cleared: %s", self.job_id, exc)


def _field(instructions: str, text: str) -> str:
    return hashlib.sha256(f"{instructions}\0{text}".encode()).hexdigest()[:32]
