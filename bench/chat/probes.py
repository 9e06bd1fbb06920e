"""Round trips the chat path makes before the first token, timed one by one from this process against the
run's own PostgreSQL and Redis (after the phases, with nothing else running), to price the fixes the hop
table suggests: what a row write with a commit costs with and without ``pool_pre_ping`` and with
``synchronous_commit`` off, and what one event XADD costs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import create_engine, text

from bench.common import pct
from protostar.constants import EventType
from protostar.jobs.events import EventLog, stream_key

UPDATE = text("UPDATE jobs SET heartbeat_at = now() WHERE id = :id")


def measure(settings: Any, redis: Any, job_id: str, *, reps: int = 200) -> list[tuple[str, float, float]]:
    """(what, p50 ms, p99 ms) per round trip, the variants interleaved call by call."""
    assert settings.database_url
    url, options = settings.database_url, "-c statement_timeout=30000"
    args: dict[str, Any] = {"connect_timeout": 5, "options": options}  # as make_engine
    as_worker = create_engine(url, pool_size=2, pool_pre_ping=True, connect_args=args)
    no_ping = create_engine(url, pool_size=2, pool_pre_ping=False, connect_args=args)
    async_commit = create_engine(
        url, pool_size=2, pool_pre_ping=False, connect_args=args | {"options": options + " -c synchronous_commit=off"}
    )
    params = {"id": uuid.UUID(job_id)}
    events = EventLog(redis, ttl=60, maxlen=1000)
    scratch = f"bench-probe-{uuid.uuid4()}"

    def write(engine: Any) -> Callable[[], None]:
        def run() -> None:
            with engine.begin() as conn:
                conn.execute(UPDATE, params)

        return run

    def select(engine: Any) -> Callable[[], None]:
        def run() -> None:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))

        return run

    probes: list[tuple[str, Callable[[], None]]] = [
        ("row UPDATE + COMMIT, as `repo.progress` (pool_pre_ping, synchronous commit)", write(as_worker)),
        ("  the same without pool_pre_ping", write(no_ping)),
        ("  the same without pool_pre_ping, `synchronous_commit=off`", write(async_commit)),
        ("`SELECT 1` (what pool_pre_ping adds per checkout)", select(no_ping)),
        ("event XADD + EXPIRE (`EventLog.publish`, one pipeline)", lambda: _publish(events, scratch)),
    ]
    timings: dict[str, list[float]] = {name: [] for name, _ in probes}
    for _ in range(reps):
        for name, probe in probes:
            started = time.perf_counter()
            probe()
            timings[name].append(1000 * (time.perf_counter() - started))
    redis.delete(stream_key(scratch))
    for engine in (as_worker, no_ping, async_commit):
        engine.dispose()
    return [(name, pct(values, 0.5), pct(values, 0.99)) for name, values in timings.items()]


def _publish(events: EventLog, job_id: str) -> None:
    events.publish(job_id, EventType.TOKEN, {"text": " token"})
