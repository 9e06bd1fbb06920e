"""Beat's jobs on the ``maintenance`` queue. Each is single-flight under a Redis lock."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from celery import shared_task
from sqlalchemy.orm import Session

from protostar.bundle import Clients
from protostar.constants import TaskName
from protostar.db.engine import make_sessionmaker
from protostar.documents.reembed import reembed
from protostar.ingest import parts
from protostar.jobs.reconcile import reconcile
from protostar.settings import MAINTENANCE_TIME_LIMITS
from protostar.summary.submit import resummarize
from protostar.worker import resources

logger = logging.getLogger(__name__)

LOCK_PREFIX = "protostar:lock:"
_SOFT, _HARD = MAINTENANCE_TIME_LIMITS

T = TypeVar("T")


def single_flight(name: str, run: Callable[[Session, Clients], T]) -> T | None:
    """Run ``run`` unless another run of ``name`` holds the lock (two beats, or a run that overran)."""
    res = resources.current()
    lock = res.redis.lock(f"{LOCK_PREFIX}{name}", timeout=60, blocking=False)
    if not lock.acquire():
        logger.info("%s skipped: another run holds the lock", name)
        return None
    try:
        with make_sessionmaker(res.engine)() as session:
            return run(session, res)
    finally:
        lock.release()


@shared_task(name=TaskName.RECONCILE.value, acks_late=True, soft_time_limit=_SOFT, time_limit=_HARD)
def reconcile_task() -> dict[str, int] | None:
    def run(session: Session, res: Clients) -> dict[str, int]:
        counts = reconcile(session=session, client=res.redis, dispatcher=res.dispatcher).as_dict()
        counts["ingest_parts_swept"] = parts.sweep(res.engine)  # of sharded ingests that ended cancelled
        return counts

    return single_flight("reconcile", run)


@shared_task(name=TaskName.RESUMMARIZE.value, acks_late=True, soft_time_limit=_SOFT, time_limit=_HARD)
def resummarize_task() -> dict[str, Any] | None:
    def run(session: Session, res: Clients) -> dict[str, Any]:
        settings = res.settings
        queued = resummarize(
            session,
            dispatcher=res.dispatcher,
            stale_after=settings.summary_stale_after,
            batch=settings.summary_batch,
            backoff_base=settings.summary_backoff_base,
            backoff_cap=settings.summary_backoff_cap,
        )
        return {"queued": len(queued)}

    return single_flight("resummarize", run)


@shared_task(name=TaskName.REEMBED.value, acks_late=True, soft_time_limit=_SOFT, time_limit=_HARD)
def reembed_task() -> dict[str, Any] | None:
    def run(session: Session, res: Clients) -> dict[str, Any]:
        settings = res.settings  # the model id is the setting's, whatever the provider: no model is loaded here
        queued = reembed(
            session, dispatcher=res.dispatcher, model=settings.embedding_model, in_flight=settings.reembed_in_flight
        )
        return {"queued": len(queued)}

    return single_flight("reembed", run)
