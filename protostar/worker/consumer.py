"""The workers' Celery consumer: Celery's own, with a fix so that a worker survives the broker going away.

What broke: when the connection to Redis drops while tasks are running (their messages unacknowledged, as
``acks_late`` keeps them), Celery 5.7's ``on_connection_error_after_connected`` first *collects* the connection
(dropping its transport state) and then closes it. Closing the channel makes kombu's Redis QoS put the unacked
messages back in their queues, for which it builds a new Redis pool from the connection it has just dropped:
``AttributeError: 'NoneType' object has no attribute 'hostname'``. ``ignore_errors`` lets only connection errors
pass, so the consumer's crash becomes the worker's "Unrecoverable error", and the worker exits ("Error on stopping
Hub" is the same error met again while it stops). The same happens later when a task that ran across the outage
finishes and its message is acknowledged (or rejected) on the channel that was closed. Every pool is affected;
a supervisor that stops everything when one process dies then takes the whole stack down.

The fix, when the connection is lost:

* the old channels neither restore their unacked messages on close nor acknowledge or reject them afterwards
  (``_left_unacked``): nothing touches the dropped connection again;
* the messages of tasks still *running* here stay in Redis's unacked set: putting them back would only hand them
  to a second delivery. When they come back after the visibility timeout, the job row says they ended
  (``protostar.jobs.repo.claim``) and they are acknowledged then;
* the messages Celery drops on reconnect without running them (prefetched, or held for a countdown such as a
  retry's) are put back in their queues by a thread once Redis answers again (``_restore``), as kombu's own
  restore would have done, so that none waits for the visibility timeout.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import redis
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.state import active_requests

from protostar import backoff

logger = logging.getLogger(__name__)

RESTORE_TRIES = 60  # about 10 minutes of backoff capped at 10 s before the messages are left to the visibility timeout


class Consumer(CeleryConsumer):  # type: ignore[misc]
    def on_connection_error_after_connected(self, exc: Exception) -> None:
        stranded = _detach(self.connection)
        if stranded:
            url = self.app.conf.broker_url
            threading.Thread(target=_restore, args=(url, stranded), name="restore-unacked", daemon=True).start()
        super().on_connection_error_after_connected(exc)


def _detach(connection: Any) -> dict[str, tuple[str, str]]:
    """Cut the channels of ``connection`` off from it; the unacked messages of tasks not running here, by delivery
    tag, with the unacked keys they are kept under."""
    transport = getattr(connection, "_transport", None)
    channels = list(getattr(transport, "channels", None) or [])
    default = getattr(connection, "_default_channel", None)
    if default is not None and default not in channels:
        channels.append(default)
    running = {getattr(r.message, "delivery_tag", None) for r in tuple(active_requests)}
    stranded: dict[str, tuple[str, str]] = {}
    for channel in channels:
        channel.do_restore = False
        channel.basic_ack = _left_unacked
        channel.basic_reject = _left_unacked
        qos = getattr(channel, "_qos", None)
        keys = (getattr(channel, "unacked_key", "unacked"), getattr(channel, "unacked_index_key", "unacked_index"))
        for tag in list(getattr(qos, "_delivered", None) or {}):
            if tag not in running:
                stranded[str(tag)] = keys
    logger.info(
        "broker connection lost: %d running task(s) keep their messages; %d not started are restored once Redis "
        "answers",
        len(running),
        len(stranded),
    )
    return stranded


def _left_unacked(delivery_tag: Any, *_: Any, **__: Any) -> None:
    """An ack or reject on a channel closed by a lost connection: the message stays in Redis's unacked set."""
    logger.info("message %s left unacked: its channel closed with the broker connection", delivery_tag)


def _restore(url: str, stranded: dict[str, tuple[str, str]]) -> None:
    """Move the ``stranded`` messages from Redis's unacked set back to their queues, once Redis answers."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        for attempt in range(RESTORE_TRIES):
            try:
                restored = sum(_restore_one(client, tag, *keys) for tag, keys in stranded.items())
            except redis.RedisError as exc:
                if attempt == RESTORE_TRIES - 1:
                    logger.error(
                        "could not restore %d message(s), left to the visibility timeout: %r", len(stranded), exc
                    )
                    return
                threading.Event().wait(backoff.delay(attempt, base=0.5, cap=10.0))
                continue
            logger.info("restored %d message(s) not started before the broker connection was lost", restored)
            return
    finally:
        client.close()


def _restore_one(client: redis.Redis, tag: str, unacked_key: str, index_key: str) -> int:
    """Put one unacked message back at the head of its queue (kombu's layout: ``[payload, exchange, routing key]``
    in the unacked hash; our exchanges are direct, so the routing key names the queue)."""

    def move(pipe: Any) -> None:
        raw = pipe.hget(unacked_key, tag)
        pipe.multi()
        pipe.zrem(index_key, tag)
        pipe.hdel(unacked_key, tag)
        if raw:
            payload, _, routing_key = json.loads(raw)
            payload.setdefault("headers", {})["redelivered"] = True
            pipe.rpush(routing_key, json.dumps(payload))

    replies = client.transaction(move, unacked_key)
    return 1 if replies and replies[-1] else 0
