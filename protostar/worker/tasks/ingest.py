"""The ``ingest`` queue: one document per task. The shell; the work is in :mod:`protostar.ingest.pipeline`."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from protostar.constants import TaskName
from protostar.worker import limits, resources
from protostar.worker.shell import run_job


@shared_task(bind=True, name=TaskName.INGEST.value, acks_late=True)
def ingest_task(self: Task, job_id: str) -> dict[str, Any] | None:
    from protostar.ingest.pipeline import ingest  # worker-only imports, loaded by the ingest worker

    clients = resources.current()
    try:
        return run_job(
            self,
            clients,
            job_id,
            lambda ctx: ingest(
                ctx,
                engine=clients.engine,
                bucket=clients.bucket,
                embedder=clients.embedder,
                settings=clients.settings,
            ),
        )
    finally:
        limits.release_free_memory()
