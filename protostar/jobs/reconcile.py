"""The reconciler: makes the queues agree with the ``jobs`` table. Run by beat every ``reconcile_interval``
seconds on the maintenance worker (no tenant work queues in front of it), single-flight.

* **turns**: jobs waiting for their tenant's turn (``jobs.turns``) whose tenant has a free slot on their queue
  → sent now, oldest first, within the cap. An ending sends the next job itself; this covers an ending whose
  send never happened (its worker killed right after, PostgreSQL away), a cancel, an expiry, a failed send.
  Rows committed unsent by an older API that died before its send are sent the same way after ``unsent_grace``.
* **silent**: running, but no heartbeat for ``reap_after`` → re-queued while attempts remain, else failed
  ``worker_lost`` with a reason that says its worker kept dying (or ``cancelled`` when a cancel was pending).
  This is how a thread-pool worker's jobs come back after its process died: their messages sit in kombu's
  ``unacked`` hash until the visibility timeout (hours), so nothing else would redeliver them soon. A prefork
  child's message is redelivered at once and takes over by itself once the heartbeat is ``takeover_after`` old.
* **webhooks**: pending webhook deliveries whose send was lost (``jobs.outbox``) → sent again.
* **long queued**: sent more than ``reap_after`` ago and not started. Where is its message?

  - in kombu's ``unacked`` hash: a worker took it (prefetched, or holding a retry's countdown). Whether that
    worker is alive is decided exactly: every live worker is asked once per run, with one broadcast
    (``control.inspect().query_task(ids)``, answered from its request table, which holds reserved, scheduled
    and active requests), whether it holds these ids. The node name is not trusted (a restarted worker has the
    dead one's name but not its requests), nor the delivery time, except that a delivery younger than
    ``FRESH_DELIVERY`` s (``unacked_index`` scores) counts as held, since its worker may not have registered
    it yet. A message no live worker holds is *orphaned*: its ``unacked`` entry is dropped (or kombu would
    deliver it again hours later) and the job is sent again. A worker that misses the one-second reply window
    costs at most a second delivery, which its claim turns away (``jobs.repo.claim``);
  - in its queue: *waiting* behind others, left alone;
  - nowhere (broker data lost): *lost*, sent again;
  - past ``task_expires``: *expired* and failed, since a worker would discard its message anyway.

No job runs twice to visible effect whatever the reconciler sends: a delivery runs only after claiming the row
(attempts + 1), and every final write checks that the delivery still owns it (``jobs.repo.lock_owned``).
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import redis
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from protostar.constants import JobStatus
from protostar.db.models import Job
from protostar.jobs import outbox, repo, turns
from protostar.jobs.dispatch import BROKER_ERRORS, Dispatcher
from protostar.jobs.ending import Ending

logger = logging.getLogger(__name__)

PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport keeps priorities 3, 6, 9 in lists "<queue>\x06\x16<p>"
UNACKED = "unacked"  # kombu's hash of messages delivered to a worker and not yet acknowledged (by delivery tag)
UNACKED_INDEX = "unacked_index"  # kombu's sorted set of those delivery tags, scored by delivery time
SCAN_LIMIT = 20_000  # a longer queue is assumed to still hold its messages (they are waiting)
FRESH_DELIVERY = 5.0  # seconds: a delivery this young counts as held (its worker may not have registered it)
INSPECT_TIMEOUT = 1.0  # seconds live workers have to say which of the ids they hold


@dataclass
class Report:
    released: int = 0  # jobs whose tenant's turn came (waiting ones, or committed unsent)
    requeued_silent: int = 0
    failed_silent: int = 0
    cancelled_silent: int = 0
    expired: int = 0
    resent_orphaned: int = 0
    resent_lost: int = 0
    waiting: int = 0
    webhooks_resent: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Delivery:
    tag: str
    delivered_at: float  # the worker's clock, seconds since the epoch


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


def in_queue(client: redis.Redis, queue: str, job_ids: set[str]) -> set[str]:
    """Which of ``job_ids`` have a message waiting in ``queue`` (any priority)."""
    found: set[str] = set()
    for key in [queue, *(f"{queue}{PRIORITY_SEP}{p}" for p in (3, 6, 9))]:
        length = int(client.llen(key))
        if length > SCAN_LIMIT:
            return set(job_ids)
        for start in range(0, length, 1000):
            found |= _matching(client.lrange(key, start, start + 999), job_ids)
    return found


def unacked(client: redis.Redis, job_ids: set[str]) -> dict[str, list[Delivery]]:
    """The deliveries of ``job_ids`` that a worker took and has not acknowledged, by job id."""
    found: dict[str, list[Delivery]] = defaultdict(list)
    for key, raw in client.hscan_iter(UNACKED, count=1000):
        job_id = _message_id(raw)
        if job_id is None or job_id not in job_ids:
            continue
        tag = key.decode() if isinstance(key, bytes) else str(key)
        score = client.zscore(UNACKED_INDEX, tag)
        found[job_id].append(Delivery(tag, float(score) if score is not None else time.time()))
    return dict(found)


def in_broker(client: redis.Redis, queue: str, job_ids: set[str]) -> set[str]:
    """Which of ``job_ids`` still have a message in ``queue`` or taken by a worker (alive or not)."""
    return in_queue(client, queue, job_ids) | set(unacked(client, job_ids))


def held_by_live_workers(dispatcher: Dispatcher, job_ids: set[str]) -> set[str]:
    """Which of ``job_ids`` a live worker holds (reserved, waiting for its countdown, or running): one broadcast,
    answered by every worker that is alive, whatever its name."""
    if not job_ids:
        return set()
    inspect = dispatcher.celery.control.inspect(timeout=INSPECT_TIMEOUT)
    for attempt in (1, 2):  # after a Redis restart the pooled connection is stale: its first use fails
        try:
            replies = inspect.query_task(*sorted(job_ids)) or {}
            break
        except BROKER_ERRORS as exc:
            if attempt == 2:  # no answer is no proof: count them held, and ask again next run
                logger.warning("could not ask the workers which messages they hold: %s", exc)
                return set(job_ids)
    held: set[str] = set()
    for tasks in replies.values():
        if isinstance(tasks, dict):
            held |= set(tasks) & job_ids
    return held


def drop_unacked(client: redis.Redis, deliveries: Iterable[Delivery]) -> None:
    """Forget deliveries whose worker is dead, so kombu does not hand them out again at the visibility timeout."""
    tags = [d.tag for d in deliveries]
    if tags:
        pipe = client.pipeline()
        pipe.hdel(UNACKED, *tags)
        pipe.zrem(UNACKED_INDEX, *tags)
        pipe.execute()


def reconcile(*, session: Session, client: redis.Redis, dispatcher: Dispatcher, batch: int = 500) -> Report:
    settings = dispatcher.settings
    report = Report()
    ended: list[tuple[Job, Ending]] = []
    with session.begin():  # each tenant's turns in a short transaction of their own (``next_turn``)
        now = repo.db_now(session)
        groups = turns.waiting(session.connection(), older_than=repo.ago(now, settings.unsent_grace), limit=batch)
    for tenant_id, queue in groups:
        report.released += dispatcher.next_turn(tenant_id=tenant_id, queue=queue)
    with session.begin():
        conn = session.connection()
        now = repo.db_now(session)
        for job in repo.silent(session, heartbeat_before=repo.ago(now, settings.reap_after), limit=batch):
            ending = _reap_silent(conn, job, dispatcher, report, now=now)
            if ending is not None:
                ended.append((job, ending))
        waiting: list[Job] = []
        for job in repo.long_queued(session, dispatched_before=repo.ago(now, settings.reap_after), limit=batch):
            if job.created_at < repo.ago(now, settings.task_expires):
                expired = Ending(
                    JobStatus.FAILED, "expired", f"not started within {settings.task_expires} s of being queued"
                )
                if repo.finish(conn, job_id=job.id, ending=expired, only_from=(JobStatus.QUEUED,)):
                    ended.append((job, expired))
                    report.expired += 1
            else:
                waiting.append(job)
        _find_messages(conn, waiting, client, dispatcher, report)
    for job, ending in ended:  # after the commit: a follower that sees ``done`` finds the row ended
        dispatcher.events.publish_many(job.id, ending.events())
        dispatcher.send_webhooks(job_id=job.id)
    report.webhooks_resent = resend_webhooks(dispatcher)
    if any(report.as_dict().values()):
        logger.info("reconciled: %s", report.as_dict())
    return report


def _find_messages(
    conn: Connection, jobs: list[Job], client: redis.Redis, dispatcher: Dispatcher, report: Report
) -> None:
    """Long-queued jobs: left alone while a live worker or the queue holds their message, else sent again."""
    if not jobs:
        return
    taken = unacked(client, {str(j.id) for j in jobs})
    fresh = time.time() - FRESH_DELIVERY
    ask = {i for i, ds in taken.items() if all(d.delivered_at < fresh for d in ds)}
    live = held_by_live_workers(dispatcher, ask)
    by_queue: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        job_id = str(job.id)
        if job_id not in taken:
            by_queue[job.queue].append(job)
        elif job_id in ask and job_id not in live:
            logger.warning("job_id=%s queue=%s: its message is held by a dead worker; sending again", job.id, job.queue)
            drop_unacked(client, taken[job_id])
            _send_again(conn, job, dispatcher)
            report.resent_orphaned += 1
        else:
            report.waiting += 1
    for queue, queued in by_queue.items():
        present = in_queue(client, queue, {str(j.id) for j in queued})
        for job in queued:
            if str(job.id) in present:
                report.waiting += 1
                continue
            logger.warning("job_id=%s queue=%s lost its message; sending again", job.id, queue)
            _send_again(conn, job, dispatcher)
            report.resent_lost += 1


def _send_again(conn: Connection, job: Job, dispatcher: Dispatcher) -> None:
    dispatcher.send(job)
    repo.mark_sent(conn, job_id=job.id)


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
        dispatcher.send(job, {"status": JobStatus.QUEUED.value, "reason": "its worker stopped answering"})
        report.requeued_silent += 1
        return None
    else:
        ending = repo.worker_lost(job.attempts, settings.max_attempts, silent_for)
        report.failed_silent += 1
    return ending if repo.finish(conn, job_id=job.id, ending=ending, only_from=(JobStatus.RUNNING,)) else None


def resend_webhooks(dispatcher: Dispatcher) -> int:
    """Send again the webhook deliveries whose send was lost (``jobs.outbox.lost``): never sent ``reap_after``
    seconds after their job ended, or due that long with no attempt holding them. A duplicate is harmless: an
    attempt claims its row first."""
    with dispatcher.engine.connect() as conn:
        ids = outbox.lost(conn, older_than=dispatcher.settings.reap_after)
    if not ids:
        return 0
    logger.warning("%d webhook deliveries lost their send; sending again", len(ids))
    try:
        return dispatcher.send_deliveries(ids)
    except BROKER_ERRORS as exc:
        logger.warning("webhook deliveries not sent again, the broker is unavailable: %s", exc)
        return 0
