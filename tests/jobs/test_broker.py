"""The broker's transport (``jobs.broker``): kombu's Redis channel with one client for its publishes and acks,
built again when the channel's connection pool is (after a fork), on the live Redis; ``rediss://`` keeps
kombu's own transport (its TLS defaults)."""

from __future__ import annotations

import uuid

import redis

from protostar.jobs.broker import Transport, create_celery
from tests.conftest import Live


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
