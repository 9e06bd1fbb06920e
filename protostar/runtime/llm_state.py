"""The embedded LLM's state, as ``protostar up`` publishes it in Redis for the API to read.

``protostar up`` serves ingestion, search and jobs at once and builds llama-server in the background (the first
time on a machine it compiles, about 9 minutes on 2 cores); the chat and summary workers consume only once
it answers, so their jobs wait queued in the broker meanwhile. The key ``protostar:llm:state`` says where it
is, as JSON::

    {"state": "building", "detail": "compiling llama-server: 42% (...)", "progress": 42, "since": 1764350000.0}

``state`` is ``building`` (install and compile; ``progress`` is the compile's percentage when known),
``starting`` (loading the model), ``ready``, ``failed`` (``detail`` says why and where the log is) or
``external`` (``up`` embeds no LLM: ``PROTOSTAR_LLM_BASE_URL`` is set; kept for good, harmless). The key
lives ``TTL`` seconds and ``up`` refreshes it, so a stopped ``up`` leaves no stale state behind; without it
``read_state`` answers ``unknown`` (an LLM this process knows nothing about, as in production: assumed to
serve).

Import-light on purpose: the API's readiness route and the job dispatcher read it.
"""

from __future__ import annotations

import json
import logging
from enum import StrEnum
from typing import Any

import redis

logger = logging.getLogger(__name__)

KEY = "protostar:llm:state"
TTL = 60  # seconds; ``up`` rewrites the key well within it


class LLMState(StrEnum):
    BUILDING = "building"
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    EXTERNAL = "external"
    UNKNOWN = "unknown"


SERVING = frozenset({LLMState.READY, LLMState.EXTERNAL, LLMState.UNKNOWN})


def write_state(
    client: redis.Redis,
    state: LLMState,
    *,
    detail: str = "",
    progress: int | None = None,
    since: float,
    ttl: int | None = TTL,
) -> None:
    """Publish ``state`` (``since``: when it began, epoch seconds) for ``ttl`` seconds (None: for good)."""
    value = {"state": state.value, "detail": detail, "progress": progress, "since": since}
    client.set(KEY, json.dumps(value), ex=ttl)


def clear_state(client: redis.Redis) -> None:
    client.delete(KEY)


def read_state(client: redis.Redis) -> dict[str, Any]:
    """The published state, or ``{"state": "unknown", ...}`` when none is (or Redis cannot say). Never raises."""
    try:
        raw = client.get(KEY)
    except redis.RedisError as exc:
        logger.warning("cannot read %s: %s", KEY, exc)  # the detail reaches callers: no internal text in it
        return {"state": LLMState.UNKNOWN.value, "detail": "the LLM's state cannot be read now", "progress": None}
    if raw is None:
        return {"state": LLMState.UNKNOWN.value, "detail": "", "progress": None}
    try:
        value: dict[str, Any] = json.loads(raw)
        LLMState(value["state"])
    except (ValueError, KeyError, TypeError):
        logger.warning("ignoring a malformed %s: %r", KEY, raw[:200])
        return {"state": LLMState.UNKNOWN.value, "detail": "", "progress": None}
    return value


def waiting_note(client: redis.Redis) -> dict[str, Any] | None:
    """For a chat or summary job just queued: why it waits, when the embedded LLM does not serve yet, else None.

    The data to merge into the job's ``queued`` status event, e.g.::

        {"waiting_for": "llm", "llm": {"state": "building", "progress": 42, "detail": "..."},
         "message": "waiting for the embedded LLM: compiling llama-server: 42% (...); the job runs when it is ready"}
    """
    value = read_state(client)
    if value["state"] in SERVING:
        return None
    llm = {"state": value["state"], "progress": value.get("progress"), "detail": value.get("detail", "")}
    if value["state"] == LLMState.FAILED:
        message = f"the embedded LLM failed to start: {llm['detail']}; the job stays queued until it is fixed"
    else:
        message = f"waiting for the embedded LLM: {llm['detail'] or llm['state']}; the job runs when it is ready"
    return {"waiting_for": "llm", "llm": llm, "message": message}
