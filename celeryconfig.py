"""Celery settings, loaded with ``app.config_from_object("celeryconfig")`` by the API and every worker.

Values come from :class:`protostar.settings.Settings`, the only reader of the environment. Per-worker
choices (pool, concurrency, child recycling) are command-line flags built in ``protostar.commands``.
"""

from __future__ import annotations

from datetime import timedelta as _timedelta

from kombu.entity import Exchange as _Exchange
from kombu.entity import Queue as _KombuQueue

from protostar.constants import Queue as _Queue
from protostar.constants import TaskName as _TaskName
from protostar.jobs.kinds import task_routes as _task_routes
from protostar.settings import get_settings as _get_settings

# Every public name here becomes a Celery setting (and shows in Flower), so helpers are imported as _names.

_settings = _get_settings()

broker_url = _settings.redis_url or f"redis://{_settings.host}:{_settings.redis_port}/0"
result_backend = broker_url

# --- queues and routing: every queue is declared, a typo fails loudly --------------------------------------
task_queues = tuple(_KombuQueue(q.value, _Exchange(q.value), routing_key=q.value) for q in _Queue)
task_default_queue = _Queue.MAINTENANCE.value
task_create_missing_queues = False
task_routes = _task_routes()

# --- delivery: a task is acknowledged only after it ran; a dead child's task goes back to the queue --------
task_acks_late = True
task_reject_on_worker_lost = True
task_acks_on_failure = True
task_acks_on_timeout = True
worker_prefetch_multiplier = 1
broker_transport_options = {
    # Above the longest hard time limit, or Redis hands a long task to a second worker while it runs.
    "visibility_timeout": _settings.visibility_timeout,
    "socket_connect_timeout": 5,
    "socket_keepalive": True,
    "health_check_interval": 25,
}
broker_connection_retry_on_startup = True
# A worker never gives up on the broker: after a Redis restart, however long, it reconnects and consumes again
# (Celery's default stops the worker after 100 failed reconnects). Its jobs in flight go on meanwhile: their
# events and heartbeats ride out the outage (protostar.jobs.context), their acks are restored by Redis.
broker_connection_max_retries = None
# Celery's consumer with the fix that keeps a lost connection from crashing the worker (see the module's doc).
worker_consumer = "protostar.worker.consumer:Consumer"
worker_cancel_long_running_tasks_on_connection_loss = False
# An ingest child loads the parsers and the embedding model after fork (worker_process_init): allow it time.
worker_proc_alive_timeout = 120

# --- serialization and results: the jobs table holds business results, not the backend ---------------------
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
task_ignore_result = True
result_expires = 3600
timezone = "UTC"
enable_utc = True

# --- visibility for Flower ------------------------------------------------------------------------------
worker_send_task_events = True
task_send_sent_event = True
task_track_started = True

# --- time limits: per task in its decorator; these are the defaults for anything else ---------------------
task_soft_time_limit = 60
task_time_limit = 90

# --- beat: interval schedules; each send expires before the next one, so a backlog never piles up ---------
_reconcile = _timedelta(seconds=_settings.reconcile_interval)
beat_schedule = {
    "reconcile-jobs": {
        "task": _TaskName.RECONCILE.value,
        "schedule": _reconcile,
        "options": {"expires": max(1.0, _settings.reconcile_interval - 1), "queue": _Queue.MAINTENANCE.value},
    },
    "resummarize-sessions": {
        "task": _TaskName.RESUMMARIZE.value,
        "schedule": _timedelta(minutes=1),
        "options": {"expires": 55, "queue": _Queue.MAINTENANCE.value},
    },
    "reembed-documents": {
        "task": _TaskName.REEMBED.value,
        "schedule": _timedelta(seconds=_settings.reembed_interval),
        "options": {"expires": max(1.0, _settings.reembed_interval - 1), "queue": _Queue.MAINTENANCE.value},
    },
}
