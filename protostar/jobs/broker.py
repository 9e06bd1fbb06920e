"""The Celery application shared by the API (which only sends by name) and the workers.

Importing this module creates no connection: Celery connects lazily, in the process that uses it.
"""

from __future__ import annotations

from celery import Celery

from protostar.settings import Settings


def create_celery(settings: Settings, *, role: str = "worker") -> Celery:
    app = Celery("protostar")
    app.config_from_object("celeryconfig")
    if settings.redis_url:  # the settings given win over the process's own (``protostar up`` resolves them)
        app.conf.broker_url = app.conf.result_backend = settings.redis_url
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
