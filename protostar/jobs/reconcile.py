"""The reconciler: makes the queues agree with the ``jobs`` table. Run by beat, single-flight.

* **unsent**: committed but never sent (the API died between commit and send) → sent now.
* **silent**: running, but no heartbeat for ``reap_after`` → re-queued while attempts remain, else failed
  with a reason that says the worker stopped answering (or ``cancelled`` when a cancel was pending).
* **long queued**: sent more than ``reap_after`` ago and not started. If its message is still in the
  broker (in the queue, or reserved by a worker) it is *waiting* behind others and left alone; if the
  message is gone (broker data lost) it is *lost* and sent again; past ``task_expires`` it has *expired*
  and is failed, since its message would be discarded by the worker anyway.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import redis
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from protostar.constants import EventType, JobStatus
from protostar.db.models import Job
from protostar.errors import WorkerLost
from protostar.jobs import repo
from protostar.jobs.dispatch import Dispatcher
from protostar.jobs.ending import Ending

logger = logging.getLogger(__name__)

PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport keeps priorities 3, 6, 9 in lists "<queue>\x06\x16<p>"
UNACKED = "unacked"  # kombu's hash of messages delivered to a worker and not yet acknowledged
SCAN_LIMIT = 20_000  # a longer queue is assumed to still hold its messages (they are waiting)


@dataclass
class Report:
    resent_unsent: int = 0
    requeued_silent: int = 0
    failed_silent: int = 0
    cancelled_silent: int = 0
    expired: int = 0
    resent_lost: int = 0
    waiting: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _message_id(raw: bytes | str) -> str | None:
    try:
        message: Any = json.loads(raw)
        if isinstance(message, list):  # unacked entries are [message, exchange, routing_key]
            message = message[0]
        return str(message["headers"]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def _matching(raws: Iterable[bytes | str], job_ids: set[str]) -> set[str]:
    return {i for i in map(_message_id, raws) if i is not None and i in job_ids}


def in_broker(client: redis.Redis, queue: str, job_ids: set[str]) -> set[str]:
    """Which of ``job_ids`` still have a message in ``queue`` or reserved by a worker."""
    found: set[str] = set()
    for key in [queue, *(f"{queue}{PRIORITY_SEP}{p}" for p in (3, 6, 9))]:
        length = int(client.llen(key))
        if length > SCAN_LIMIT:
            return set(job_ids)
        for start in range(0, length, 1000):
            found |= _matching(client.lrange(key, start, start + 999), job_ids)
    found |= _matching((raw for _, raw in client.hscan_iter(UNACKED, count=1000)), job_ids)
    return found


def reconcile(*, session: Session, client: redis.Redis, dispatcher: Dispatcher, batch: int = 500) -> Report:
    settings = dispatcher.settings
    report = Report()
    ended: list[tuple[Job, Ending]] = []
    with session.begin():
        conn = session.connection()
        now = repo.db_now(session)
        for job in repo.unsent(session, older_than=repo.ago(now, settings.unsent_grace), limit=batch):
            dispatcher.send(job)
            repo.mark_sent(conn, job_id=job.id)
            report.resent_unsent += 1
        for job in repo.silent(session, heartbeat_before=repo.ago(now, settings.reap_after), limit=batch):
            ending = _reap_silent(conn, job, dispatcher, report, now=now)
            if ending is not None:
                ended.append((job, ending))
        by_queue: dict[str, list[Job]] = defaultdict(list)
        for job in repo.long_queued(session, dispatched_before=repo.ago(now, settings.reap_after), limit=batch):
            if job.created_at < repo.ago(now, settings.task_expires):
                expired = Ending(
                    JobStatus.FAILED, "expired", f"not started within {settings.task_expires} s of being queued"
                )
                if repo.finish(conn, job_id=job.id, ending=expired, only_from=(JobStatus.QUEUED,)):
                    ended.append((job, expired))
                    report.expired += 1
            else:
                by_queue[job.queue].append(job)
        for queue, jobs in by_queue.items():
            present = in_broker(client, queue, {str(j.id) for j in jobs})
            for job in jobs:
                if str(job.id) in present:
                    report.waiting += 1
                    continue
                logger.warning("job_id=%s queue=%s lost its message; sending again", job.id, queue)
                dispatcher.send(job)
                repo.mark_sent(conn, job_id=job.id)
                report.resent_lost += 1
    for job, ending in ended:  # after the commit: a follower that sees ``done`` finds the row ended
        dispatcher.events.publish_many(job.id, ending.events())
    if any(report.as_dict().values()):
        logger.info("reconciled: %s", report.as_dict())
    return report


def _reap_silent(conn: Connection, job: Job, dispatcher: Dispatcher, report: Report, *, now: Any) -> Ending | None:
    """A running job whose heartbeat stopped: re-queued while attempts remain, else ended (the ending)."""
    settings = dispatcher.settings
    silent_for = (now - job.heartbeat_at).total_seconds() if job.heartbeat_at else settings.reap_after
    if job.cancel_requested:
        ending = Ending(JobStatus.CANCELLED, "cancelled", "cancelled; its worker stopped answering")
        report.cancelled_silent += 1
    elif job.attempts < settings.max_attempts:
        worker = job.worker
        logger.warning("job_id=%s worker=%s silent for %.0f s; re-queued", job.id, worker, silent_for)
        repo.requeue(conn, job_id=job.id)
        dispatcher.send(job)
        dispatcher.events.publish(
            job.id, EventType.STATUS, {"status": JobStatus.QUEUED.value, "reason": "its worker stopped answering"}
        )
        report.requeued_silent += 1
        return None
    else:
        message = (
            f"its worker sent no heartbeat for {silent_for:.0f} s "
            f"(attempt {job.attempts} of {settings.max_attempts}); giving up"
        )
        ending = Ending(JobStatus.FAILED, WorkerLost.code, message)
        report.failed_silent += 1
    return ending if repo.finish(conn, job_id=job.id, ending=ending, only_from=(JobStatus.RUNNING,)) else None
