"""The ``ingest`` queue: one document per task, and the helper tasks of a large document's sharded ingest. The
shells; the work is in :mod:`protostar.ingest.pipeline` and :mod:`protostar.ingest.shard`."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import Task, shared_task

from protostar.constants import Queue, TaskName
from protostar.ingest.ocr import release as release_ocr
from protostar.jobs.kinds import send_options
from protostar.worker import limits, resources
from protostar.worker.shell import run_job

logger = logging.getLogger(__name__)


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
                fan_out=lambda count: _fan_out(job_id, count),
            ),
        )
    finally:
        release_ocr()
        limits.release_free_memory()


def _fan_out(job_id: str, count: int) -> None:
    """Send ``count`` helpers for the job's parts to the ingest queue, with the ingest queue's time limits (a
    helper works through parts until none is left: the default limit of a minute stopped helpers mid-part) and an
    expiry (a helper that waited longer than a whole ingest may run finds nothing left). Not sent (the broker
    away): the job's own delivery does every part itself, so this never fails the job."""
    options = send_options(resources.current().settings, Queue.INGEST)
    options["expires"] = options["time_limit"]  # a helper's job has ended by then: it would find nothing to do
    for _ in range(max(count, 0)):
        try:
            ingest_part_task.apply_async(args=[job_id], queue=Queue.INGEST.value, **options)
        except Exception as exc:  # noqa: BLE001 (boundary: helpers only speed the job up)
            logger.warning("job_id=%s part helper not sent: %r", job_id, exc)
            return


@shared_task(bind=True, name=TaskName.INGEST_PART.value, acks_late=True)
def ingest_part_task(self: Task, job_id: str) -> int:
    """Do free parts of a sharded ingest until none is left (``protostar.ingest.shard.help_job``). Not a job:
    it claims no job row and ends nothing; the job's own delivery owns it, counts in its tenant's turns, and
    does any part a helper leaves. Returns at once for a job that ended or was cancelled."""
    from protostar.ingest import parts
    from protostar.ingest.shard import help_job

    clients = resources.current()
    jid = uuid.UUID(job_id)

    try:
        done = help_job(
            jid,
            engine=clients.engine,
            bucket=clients.bucket,
            embedder=clients.embedder,
            settings=clients.settings,
            object_key=lambda: parts.object_key(clients.engine, job_id=jid),
        )
    except Exception as exc:  # noqa: BLE001 (boundary: PostgreSQL away; the job's own delivery does the parts)
        logger.warning("job_id=%s part helper stopped: %r", job_id, exc)
        return 0
    finally:
        release_ocr()
        limits.release_free_memory()
    if done:
        logger.info("job_id=%s part helper did %d parts", job_id, done)
    return done
