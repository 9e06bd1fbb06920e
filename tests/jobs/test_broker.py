"""The broker's transport (``jobs.broker``): kombu's Redis channel with one client for its publishes and acks,
built again when the channel's connection pool is (after a fork), on the live Redis; ``rediss://`` keeps
kombu's own transport (its TLS defaults). A task's message as the dispatcher pushes it is the one ``send_task``
pushes, and kombu's consumer reads it."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime

import pytest
import redis

from protostar.jobs.broker import Transport, create_celery, task_message
from tests.conftest import Live

LIMITS = {"expires": 600, "soft_time_limit": 60, "time_limit": 90}


def test_a_channel_publishes_through_one_client_until_its_pool_is_replaced(live: Live) -> None:
    app = create_celery(live.settings, role="api")
    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, Transport)
        channel = conn.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as again:
            assert first is again
            assert first.connection_pool is channel.pool
        given = redis.Redis(connection_pool=channel.pool)
        with channel.conn_or_acquire(given) as passed:
            assert passed is given  # a client the caller holds (a pipeline's) is used as given
        channel._after_fork()  # what a prefork child does: the pool it inherited is dropped
        with channel.conn_or_acquire() as after:
            assert after is not first
            assert after.connection_pool is channel.pool
        queue = f"test-broker-{uuid.uuid4().hex[:8]}"
        with conn.SimpleQueue(queue) as q:  # publish and consume through it: the messages arrive
            q.put({"n": 1})
            message = q.get(timeout=5)
            message.ack()
            assert message.payload == {"n": 1}
            q.clear()


def test_a_tls_url_keeps_kombus_own_transport(live: Live) -> None:
    settings = live.settings.model_copy(update={"redis_url": "rediss://127.0.0.1:1/0"})
    app = create_celery(settings, role="api")
    assert app.conf.broker_transport is None
    assert create_celery(live.settings, role="api").conf.broker_transport == "protostar.jobs.broker:Transport"


def test_a_task_message_is_what_send_task_pushes(live: Live) -> None:
    app = create_celery(live.settings, role="api")
    app.conf.task_create_missing_queues = True  # a queue of this test's own, which no worker consumes
    queue = f"test-broker-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(live.settings.redis_url)
    job_id = str(uuid.uuid4())
    app.send_task(
        "protostar.probe",
        kwargs={"job_id": job_id},
        task_id=job_id,
        queue=queue,
        retry=False,
        ignore_result=True,
        **LIMITS,
    )
    client.lpush(
        queue, task_message(app, "protostar.probe", task_id=job_id, queue=queue, kwargs={"job_id": job_id}, **LIMITS)
    )
    ours, theirs = (json.loads(raw) for raw in client.lrange(queue, 0, -1))  # LPUSH: the last pushed comes first
    client.delete(queue)

    for message in (ours, theirs):
        assert uuid.UUID(message["properties"].pop("delivery_tag"))  # a fresh one each
        expires = datetime.fromisoformat(message["headers"].pop("expires"))
        assert abs((expires - datetime.now(UTC)).total_seconds() - 600) < 30
    assert ours == theirs
    assert json.loads(base64.b64decode(ours["body"]))[1] == {"job_id": job_id}


def test_a_task_message_is_consumed_as_celery_sent_it(live: Live) -> None:
    app = create_celery(live.settings, role="api")
    app.conf.task_create_missing_queues = True
    queue = f"test-broker-{uuid.uuid4().hex[:8]}"
    job_id = str(uuid.uuid4())
    with app.connection_for_write() as conn, conn.SimpleQueue(queue) as q:
        conn.default_channel.client.lpush(
            queue,
            task_message(app, "protostar.probe", task_id=job_id, queue=queue, kwargs={"job_id": job_id}, **LIMITS),
        )
        message = q.get(timeout=5)
        message.ack()
        assert message.headers["task"] == "protostar.probe"
        assert message.headers["id"] == job_id
        assert message.headers["timelimit"] == [90, 60]
        assert message.payload[1] == {"job_id": job_id}
        q.clear()


def test_a_task_message_refuses_a_queue_celeryconfig_does_not_declare(live: Live) -> None:
    app = create_celery(live.settings, role="api")
    with pytest.raises(KeyError):
        task_message(app, "protostar.probe", task_id="x", queue="no-such-queue", kwargs={}, **LIMITS)


def test_celeryconfig_sets_nothing_the_task_message_would_miss(live: Live) -> None:
    """``task_message`` lays the message out as kombu does at priority 0, uncompressed, protocol 2, with no key
    prefix: a setting that changes any of these must change it too."""
    for role in ("api", "worker"):
        conf = create_celery(live.settings, role=role).conf
        assert conf.task_protocol == 2
        assert conf.task_compression is None
        assert conf.task_default_priority is None
        assert conf.task_serializer == "json"
        assert not {"priority_steps", "sep", "global_keyprefix", "queue_order_strategy"} & set(
            conf.broker_transport_options
        )
