"""Beat's jobs on the ``maintenance`` queue. Each is single-flight under a Redis lock."""

from __future__ import annotations

import logging

from celery import shared_task

from protostar.constants import TaskName
from protostar.db.engine import make_sessionmaker
from protostar.jobs.reconcile import reconcile
from protostar.worker import resources

logger = logging.getLogger(__name__)

LOCK_PREFIX = "protostar:lock:"


@shared_task(name=TaskName.RECONCILE.value, acks_late=True, soft_time_limit=50, time_limit=55)
def reconcile_task() -> dict[str, int] | None:
    res = resources.current()
    lock = res.redis.lock(f"{LOCK_PREFIX}reconcile", timeout=60, blocking=False)
    if not lock.acquire():
        logger.info("reconcile skipped: another run holds the lock")
        return None
    try:
        with make_sessionmaker(res.engine)() as session:
            return reconcile(session=session, client=res.redis, dispatcher=res.dispatcher).as_dict()
    finally:
        lock.release()
