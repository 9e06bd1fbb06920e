"""The Celery application shared by the API (which only sends by name) and the workers.

Importing this module creates no connection: Celery connects lazily, in the process that uses it.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from kombu.serialization import dumps
from kombu.transport import redis as kombu_redis

from protostar.settings import Settings

TRANSPORT = f"{__name__}:Transport"


class Channel(kombu_redis.Channel):
    """kombu's Redis channel, with one client for its publishes and acks.

    kombu builds a ``redis.Redis`` for every publish, ack and task event (``conn_or_acquire``), and building one
    costs about 0.15 ms of CPU (its table of reply callbacks), several times per job in a worker and once per submit
    in the API. The client kept here holds no socket of its own: each command borrows one from the channel's
    connection pool and gives it back, as before, so it serves every thread of the process (and a prefork child,
    whose pool notices the fork and opens its own sockets)."""

    _shared: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        if self._shared is None or self._shared.connection_pool is not self.pool:  # a new pool: after a fork
            self._shared = self._create_client()  # type: ignore[no-untyped-call]
        yield self._shared


class Transport(kombu_redis.Transport):
    Channel = Channel


def task_message(
    app: Celery,
    name: str,
    *,
    task_id: str,
    queue: str,
    kwargs: dict[str, Any],
    expires: float,
    time_limit: float,
    soft_time_limit: float,
) -> bytes:
    """The entry ``app.send_task(name, kwargs=…, task_id=…, queue=…, ignore_result=True, expires=…, time limits)``
    pushes onto ``queue``'s Redis list, for the caller to ``LPUSH`` in a pipeline of its own (with the job's
    event: one round trip for both, where ``send_task`` costs a round trip and 0.66-0.77 ms of CPU by itself,
    ``bench.dispatch``).

    Celery builds the message (``as_task_v2``: headers, body) and kombu serializes it, as in ``send_task``; the
    envelope is kombu's virtual transport's (``Producer.publish``, ``Channel.prepare_message`` and
    ``basic_publish``: the body base64-encoded, a delivery tag, the default exchange, routed by the queue's
    name), and the list is the queue's own key (kombu's ``_q_for_pri`` at priority 0). It holds while
    celeryconfig sets no compression, priorities, key prefix or other task protocol, and
    ``tests/jobs/test_broker.py`` checks both that and the message against what ``send_task`` pushes. Unlike a
    ``send_task`` inside a running task, the message names no parent task (its root is itself) and no "sent"
    event goes out: Flower learns of the task when a worker receives it. ``KeyError`` for a queue that
    celeryconfig does not declare, as ``send_task`` refuses it (no worker would ever read that list)."""
    app.amqp.queues[queue]  # the look-up is the check: KeyError for an undeclared queue
    task = app.amqp.as_task_v2(
        task_id,
        name,
        kwargs=kwargs,
        expires=expires,
        time_limit=time_limit,
        soft_time_limit=soft_time_limit,
        ignore_result=True,
    )
    content_type, content_encoding, body = dumps(task.body, serializer=app.conf.task_serializer)  # type: ignore[no-untyped-call]
    envelope = {
        "body": base64.b64encode(body if isinstance(body, bytes) else body.encode()).decode(),
        "content-encoding": content_encoding,
        "content-type": content_type,
        "headers": task.headers,
        "properties": {
            **task.properties,
            "reply_to": app.thread_oid,
            "delivery_mode": 2,
            "expiration": str(int(expires * 1000)),
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope).encode()


def create_celery(settings: Settings, *, role: str = "worker") -> Celery:
    app = Celery("protostar")
    app.config_from_object("celeryconfig")
    if settings.redis_url:  # the settings given win over the process's own (``protostar up`` resolves them)
        app.conf.broker_url = app.conf.result_backend = settings.redis_url
    if str(app.conf.broker_url or "").startswith("redis://"):  # rediss:// keeps kombu's own (its TLS defaults)
        app.conf.broker_transport = TRANSPORT
    if role == "api":
        # The API must answer 503 quickly when Redis is down rather than hang in connection retries.
        timeout = settings.broker_connect_timeout
        app.conf.broker_transport_options = {
            **app.conf.broker_transport_options,
            "socket_connect_timeout": timeout,
            "socket_timeout": timeout,
        }
        app.conf.broker_connection_timeout = timeout
        app.conf.broker_connection_max_retries = 0
        app.conf.task_publish_retry = False
        app.conf.broker_pool_limit = 50
        # Flower learns of a task when a worker receives it; a "sent" event costs the API a publish per job.
        app.conf.task_send_sent_event = False
    return app
