"""The job-kind table: every kind of job, its task and queue, the payload it carries and whether one may be in
flight per target; and every worker, the queues it consumes and its pool. Dispatch, celeryconfig's routes, the
worker command lines (``protostar.commands``) and the reconciler read these tables and nothing else; time
limits per queue come from ``Settings.time_limits``, which the settings checks read too.

No kind needs an end hook: every end goes through ``jobs.repo.finish``, and what follows a job's end is read
from its row (a document's status is its latest ingest job's), so nothing can be left behind by an end that
skipped a hook.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from protostar.constants import JobKind, Queue, TaskName
from protostar.settings import Settings


@dataclass(frozen=True)
class Kind:
    kind: JobKind
    task: TaskName
    queue: Queue | None  # None: the caller chooses among ``PROBE_QUEUES`` (the probe)
    payload: tuple[str, ...]  # keys every payload of this kind has
    one_in_flight: str | None = None  # payload key: at most one queued or running job per value (a unique index)


KINDS: dict[JobKind, Kind] = {
    k.kind: k
    for k in (
        Kind(JobKind.PROBE, TaskName.PROBE, None, ("steps", "sleep", "fail")),
        Kind(JobKind.INGEST, TaskName.INGEST, Queue.INGEST, ("document_id", "kind")),
        # or ("messages",): a conversation the caller holds (``POST /v1/chat/completions``), answered alike
        Kind(JobKind.CHAT, TaskName.CHAT, Queue.CHAT, ("session_id", "message_id")),
        Kind(JobKind.SUMMARY_SESSION, TaskName.SUMMARY_SESSION, Queue.SUMMARY, ("session_id",), "session_id"),
        Kind(JobKind.SUMMARY_DOCUMENT, TaskName.SUMMARY_DOCUMENT, Queue.SUMMARY, ("document_id",), "document_id"),
    )
}

# The probe is a synthetic job an operator can send to any of these queues to check it end to end.
PROBE_QUEUES = (Queue.INGEST, Queue.CHAT, Queue.SUMMARY)

# Beat's periodic tasks: no job row, single-flight under a Redis lock.
MAINTENANCE_TASKS = (TaskName.RECONCILE, TaskName.RESUMMARIZE)


def task_routes() -> dict[str, dict[str, str]]:
    """celeryconfig's ``task_routes``: every task to its queue, so nothing is sent where nobody consumes."""
    routes = {k.task.value: {"queue": k.queue.value} for k in KINDS.values() if k.queue is not None}
    routes.update({t.value: {"queue": Queue.MAINTENANCE.value} for t in MAINTENANCE_TASKS})
    routes[TaskName.WEBHOOK_DELIVER.value] = {"queue": Queue.WEBHOOKS.value}
    return routes


def send_options(settings: Settings, queue: str) -> dict[str, int]:
    """What every send of a task to ``queue`` carries besides its id: the expiry and the time limits."""
    soft, hard = settings.time_limits[Queue(queue)]
    return {"expires": settings.task_expires, "soft_time_limit": soft, "time_limit": hard}


@dataclass(frozen=True)
class Worker:
    queues: tuple[Queue, ...]
    pool: Literal["prefork", "threads"]
    why: str


# The chat and summary workers spend their time waiting on the LLM's HTTP stream, so a thread pool serves
# many at once without monkey-patching (gevent would have to patch psycopg, redis and httpx alike); the
# ingest worker parses documents, CPU-bound work that needs processes to use every core. Beat's tasks (the
# reconciler, re-summarizing) have a worker of their own, so no backlog of tenant work delays job recovery.
WORKERS: dict[str, Worker] = {
    "ingest": Worker((Queue.INGEST,), "prefork", "CPU-bound parsing and embedding: one process per core"),
    "chat": Worker((Queue.CHAT,), "threads", "streaming I/O to the LLM: many concurrent answers"),
    "summary": Worker((Queue.SUMMARY,), "threads", "LLM calls: I/O-bound"),
    "maintenance": Worker(
        (Queue.MAINTENANCE,), "threads", "beat's short maintenance tasks, never queued behind tenant work"
    ),
    # Webhook deliveries wait on tenants' receivers (up to the connect + read deadlines each): on a worker of
    # their own, a slow or dead receiver holds none of the maintenance worker's threads (job recovery) and
    # none of the LLM workers'.
    "webhooks": Worker((Queue.WEBHOOKS,), "threads", "HTTP calls to tenants' webhook receivers: I/O-bound"),
}
