"""The Celery app the workers and beat run: ``celery -A protostar.worker.app worker ...``.

Clients are never built here: each process builds its own on first use, and a prefork child drops what
it inherited (``worker_process_init``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.signals import celeryd_after_setup, celeryd_init, worker_process_init, worker_ready

from protostar.constants import Queue
from protostar.db.engine import settle_heap
from protostar.embeddings.index import ensure_configured_index
from protostar.jobs.broker import create_celery
from protostar.settings import get_settings
from protostar.worker import limits, resources

TASK_MODULES = (
    "protostar.worker.tasks.probe",
    "protostar.worker.tasks.ingest",
    "protostar.worker.tasks.chat",
    "protostar.worker.tasks.summary",
    "protostar.worker.tasks.maintenance",
    "protostar.worker.tasks.webhooks",
)

logger = logging.getLogger(__name__)

app = create_celery(get_settings(), role="worker")
app.conf.include = list(TASK_MODULES)
# What a worker sends (a tenant's next turn, webhook deliveries, retries) needs no "task-sent" event: a publish
# per send, and Flower learns of the task when a worker receives it (the API does not send them either).
app.conf.task_send_sent_event = False
resources.init(app)


_consumes: set[str] = set()


@celeryd_init.connect
def _remember_queues(options: dict[str, Any] | None = None, **_: Any) -> None:
    """In the worker's main process, before any fork: which queues this worker serves."""
    queues = (options or {}).get("queues") or []
    _consumes.update(queues.split(",") if isinstance(queues, str) else queues)


@celeryd_after_setup.connect
def _remember_threads(instance: Any = None, **_: Any) -> None:
    """Once the worker has settled its pool: how many threads share this process's resources (its database
    pool is sized to them), when the pool is ``threads``."""
    pool = getattr(instance, "pool_cls", None)  # e.g. celery.concurrency.thread.TaskPool
    if "thread" in (getattr(pool, "__module__", None) or str(pool)):
        resources.current().threads = int(getattr(instance, "concurrency", 0) or 1)
    if _consumes & {Queue.INGEST.value, Queue.CHAT.value}:  # these store or search vectors
        ensure_configured_index(resources.current().settings)


@celeryd_after_setup.connect
def _settle_heap(**_: Any) -> None:
    """In the main process, its modules imported, before the pool forks (``db.engine.settle_heap``). Celery
    collects garbage before each fork of a prefork child, a walk of everything imported (about 0.1 s here, per
    child, and ``--max-tasks-per-child`` forks them again and again); the children share those pages longer,
    and their own collections skip them too."""
    settle_heap()


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    resources.after_fork()
    if Queue.INGEST.value in _consumes:
        warm_ingest()


def warm_ingest() -> None:
    """Load the parsers and the embedding model once per child, not once per task (about 5 s, ~1 GB)."""
    from protostar.ingest.parse import warm

    limits.prefer_mmap_for_large_blocks()
    warm()
    resources.current().embedder.embed(["warm-up"])
    limits.cap_address_space(resources.current().settings.ingest_memory_limit_mb)
    logger.info("ingest child warmed: parsers and %s loaded", resources.current().embedder.model)


@worker_ready.connect
def _warm_chat(**_: Any) -> None:
    """The chat worker embeds each question: load the model now, off the consumer's thread."""
    if Queue.CHAT.value in _consumes:
        threading.Thread(target=lambda: resources.current().embedder.embed(["warm-up"]), daemon=True).start()
