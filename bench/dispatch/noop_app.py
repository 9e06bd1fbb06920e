"""The bare-Celery baseline: Protostar's own Celery config (with kombu's own Redis transport) plus a ``bench``
queue and two trivial tasks.

    celery -A bench.dispatch.noop_app worker --queues bench ...   (same pool flags as a Protostar worker)

``bench.noop`` does nothing (worker CPU per task); ``bench.stamp`` pushes ``time.time()`` taken as its body
begins onto a Redis list (enqueue-to-start latency). No Protostar code runs in either.
"""

from __future__ import annotations

import os
import time

import redis
from kombu import Exchange, Queue

from protostar.jobs.broker import create_celery
from protostar.settings import get_settings

BENCH_QUEUE = "bench"

app = create_celery(get_settings(), role="worker")
app.conf.broker_transport = None  # bare Celery: kombu's own Redis transport, not Protostar's (one client per channel)
app.conf.task_queues = (*app.conf.task_queues, Queue(BENCH_QUEUE, Exchange(BENCH_QUEUE), routing_key=BENCH_QUEUE))

_client: tuple[int, redis.Redis] | None = None


def _redis() -> redis.Redis:
    """One client per process (a prefork child builds its own)."""
    global _client  # noqa: PLW0603
    if _client is None or _client[0] != os.getpid():
        url = get_settings().redis_url
        assert url
        _client = (os.getpid(), redis.Redis.from_url(url))
    return _client[1]


@app.task(name="bench.noop", acks_late=True)
def noop() -> None:
    return None


@app.task(name="bench.stamp", acks_late=True)
def stamp(key: str) -> None:
    started = time.time()
    _redis().rpush(key, repr(started))
