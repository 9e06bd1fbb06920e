"""Fair turns between tenants: a job reaches the broker only while its tenant has a free slot on its queue.

The broker's queues are first in, first out. Were every job sent at once, one tenant's 500 uploads would sit in
front of another tenant's single upload for the whole backlog. So each tenant may have at most
``Settings.tenant_inflight[queue]`` jobs *in flight* on a queue (sent and not ended: ``running``, or ``queued``
with ``dispatched_at`` set); a job submitted past that cap is committed ``queued`` with stage ``waiting_turn``
and ``dispatched_at`` NULL, and is not sent. When one of the tenant's jobs on that queue ends, its oldest
waiting job is sent (:func:`take`), to the back of the broker's queue: behind any other tenant's job that
arrived meanwhile. Each tenant thus has at most its cap in the broker at any time, and tenants take turns: a
tenant with one job waits for about one job of each busy tenant, not for their backlogs.

Who sends a waiting job: the worker that ended one of the tenant's jobs on that queue (``worker.shell``), the
cancel of a queued job (the API's cancel route), and the reconciler on every run (``jobs.reconcile``), which covers an
ending whose own send was lost (a worker killed right after the end, PostgreSQL away for a moment).

Counting and inserting (or counting and sending) happen under a transaction-scoped advisory lock on
(tenant, queue), taken in a statement of its own: the count that follows is a new statement, so its snapshot
sees every job a concurrent submit or ending committed before the lock was ours. Caps are exact, not
approximate. The lock is per tenant and queue: tenants never wait for each other. A submit does it all in one
statement (:func:`insert`, the database function ``protostar_submit_job`` of migration 0014, whose statements
each take a fresh snapshot the same way): alone in autocommit, lock, count, insert and commit are one round
trip and the lock is held only while the statement runs.

A tenant's queued jobs per queue (waiting or sent, not started) are also bounded: past
``Settings.tenant_max_queued`` a submit answers ``429`` with ``Retry-After``, before anything is stored, and the
same count decides again under the lock at insert.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql
from sqlalchemy import Connection, or_, select, text

from protostar.constants import JobStatus, Queue
from protostar.db.models import Job
from protostar.errors import TooManyRequests
from protostar.settings import Settings

WAITING_TURN = "waiting_turn"  # the stage of a job held back until its tenant has a free slot on its queue
QUOTA_RETRY_AFTER = 10  # seconds a caller over its queued-jobs quota is told to wait (``Retry-After``)
QUEUED = JobStatus.QUEUED.value


@dataclass(frozen=True)
class Admission:
    send: bool  # a slot is free: the job is committed as sent and sent at once; else it waits its turn
    in_flight: int  # the tenant's jobs on the queue sent and not ended, before this one
    cap: int


@dataclass(frozen=True)
class Released:
    """A waiting job whose turn came: what a send needs."""

    id: uuid.UUID
    task_name: str
    queue: str


def cap(settings: Settings, queue: str) -> int:
    return settings.tenant_inflight[Queue(queue)]


def lock(conn: Connection, *, tenant_id: uuid.UUID, queue: str) -> None:
    """Serialize the tenant's submits and turns on ``queue`` until the transaction ends."""
    conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": f"turns:{tenant_id}:{queue}"})


# Sent and not ended; and not started, counted only up to the quota: each reads a partial index (migration
# 0015), so neither grows with the tenant's backlog of jobs waiting their turn.
_COUNTS = text(
    "SELECT (SELECT count(*) FROM jobs WHERE tenant_id = :tenant AND queue = :queue"
    " AND (status = 'running' OR (status = 'queued' AND dispatched_at IS NOT NULL))),"
    " (SELECT count(*) FROM (SELECT 1 FROM jobs WHERE tenant_id = :tenant AND queue = :queue AND status = 'queued'"
    " LIMIT :most) q)"
)


def counts(conn: Connection, settings: Settings, *, tenant_id: uuid.UUID, queue: str) -> tuple[int, int]:
    """(in flight, queued) of the tenant's jobs on ``queue``: sent and not ended; not started, counted up to
    ``Settings.tenant_max_queued`` (all the quota needs)."""
    params = {"tenant": tenant_id, "queue": queue, "most": settings.tenant_max_queued}
    row = conn.execute(_COUNTS, params).one()
    return int(row[0]), int(row[1])


def check_quota(conn: Connection, settings: Settings, *, tenant_id: uuid.UUID, queue: str) -> None:
    """``TooManyRequests`` when the tenant's queued jobs on ``queue`` reached the quota (no lock: a check before
    costly work, such as storing an upload; :func:`admit` decides again under the lock)."""
    _, queued = counts(conn, settings, tenant_id=tenant_id, queue=queue)
    _refuse_past_quota(settings, queued, queue)


def _refuse_past_quota(settings: Settings, queued: int, queue: str) -> None:
    if queued >= settings.tenant_max_queued:
        raise TooManyRequests(
            f"{queued} jobs of yours are queued on the {queue} queue, the most allowed "
            f"(PROTOSTAR_TENANT_MAX_QUEUED); nothing was accepted, try again when some have started",
            retry_after=QUOTA_RETRY_AFTER,
        )


def admit(conn: Connection, settings: Settings, *, tenant_id: uuid.UUID, queue: str, quota: bool) -> Admission:
    """In the submitting transaction, before the job's row is written: lock the tenant's turns on ``queue``
    (until the commit), refuse past the queued-jobs quota (when ``quota``), and say whether the job may be sent
    now or waits its turn."""
    lock(conn, tenant_id=tenant_id, queue=queue)
    in_flight, queued = counts(conn, settings, tenant_id=tenant_id, queue=queue)
    if quota:
        _refuse_past_quota(settings, queued, queue)
    limit = cap(settings, queue)
    return Admission(send=in_flight < limit, in_flight=in_flight, cap=limit)


@dataclass(frozen=True)
class Inserted:
    admission: Admission
    created_at: datetime  # the job's, from the database clock (its ``dispatched_at`` too when sent)


_SUBMIT = text(
    "SELECT admitted, sent, in_flight, queued, created_at FROM protostar_submit_job("
    "CAST(:id AS uuid), CAST(:tenant AS uuid), :kind, :task, :queue, CAST(:payload AS jsonb), :cap, :max_queued)"
)


# The submit as one simple-protocol message: ``{submit}`` (the call, asked not to wait for the disk), then a
# synchronous commit of its own (see :func:`insert`). Values are rendered as literals by psycopg itself.
_CALL = (
    "protostar_submit_job(CAST({id} AS uuid), CAST({tenant} AS uuid), CAST({kind} AS text), CAST({task} AS text), "
    "CAST({queue} AS text), {payload_sql}, CAST({cap} AS integer), CAST({max_queued} AS integer), true)"
)
_ALONE = "SELECT admitted, sent, in_flight, queued, created_at FROM {submit}"
_DURABLE = "; COMMIT; SELECT txid_current()"
# The job's payload as an SQL expression: the caller's, as given (``Around.payload_sql`` may change it).
_PAYLOAD = "CAST({payload} AS jsonb)"


@dataclass(frozen=True)
class Around:
    """A statement that writes more than the job, with it: its text holds ``{submit}`` (the call of
    ``protostar_submit_job``; select its columns ``admitted, sent, in_flight, queued, created_at``) and
    ``{name}`` for each of ``values`` (rendered as literals); ``payload_sql`` is the job's payload as an SQL
    expression over ``{payload}`` (the caller's payload as jsonb). It returns no row when what it guards is
    gone: then ``missing`` is raised and nothing was written. So the call must be made laterally from the rows
    it guards (``FROM guarded CROSS JOIN LATERAL {submit}``, its arguments referring to them), and its other
    writes must depend on ``admitted``."""

    sql: str
    values: dict[str, Any]
    missing: Exception
    payload_sql: str = _PAYLOAD


def _alone(conn: Connection, params: dict[str, Any], around: Around | None) -> Any:
    """The submit (inside ``around``'s statement, when given), its commit and a synchronous commit after it, as
    one simple-protocol message (several statements need it: no bind parameters, so the values are rendered as
    literals by psycopg itself); its row, or ``None`` when ``around`` found what it guards gone."""
    driver = conn.connection.driver_connection
    values = {**params, **(around.values if around else {})}
    literals = {name: sql.Literal(value).as_string(driver) for name, value in values.items()}
    payload_sql = (around.payload_sql if around else _PAYLOAD).format(**literals)
    submit = _CALL.format(payload_sql=payload_sql, **literals)
    statement = (around.sql if around else _ALONE).format(submit=submit, **literals) + _DURABLE
    # no_parameters: the driver is handed the text alone, so a "%" in a value is not taken for a placeholder
    return conn.exec_driver_sql(statement, execution_options={"no_parameters": True}).first()


def insert(
    conn: Connection,
    settings: Settings,
    *,
    job_id: uuid.UUID,
    tenant_id: uuid.UUID,
    kind: str,
    task_name: str,
    queue: str,
    payload: dict[str, Any],
    quota: bool,
    alone: bool = False,
    around: Around | None = None,
) -> Inserted:
    """:func:`admit` and the job's insert in one statement (migration 0014): ``queued``, counted as sent
    (``dispatched_at`` set) when a slot is free, else waiting its turn (stage :data:`WAITING_TURN`). Past the
    quota (when ``quota``) ``TooManyRequests`` and nothing written. In autocommit the statement commits it; in
    a transaction the lock is held until that ends. A unique index's refusal (one in flight per target) is the
    ``IntegrityError`` of the statement.

    ``alone`` (``conn`` in autocommit, nothing else to commit with the job): the call commits without waiting
    for the disk, then, in the same message (one round trip), ``COMMIT; SELECT txid_current()`` commits a
    transaction of its own synchronously, which flushes the WAL up to it, the job's commit included. So the
    tenant's lock is never held across an fsync, and the job is durable when this returns. ``around`` (alone
    only): a statement that writes more with the job (:class:`Around`)."""
    limit = cap(settings, queue)
    params: dict[str, Any] = {
        "id": job_id,
        "tenant": tenant_id,
        "kind": kind,
        "task": task_name,
        "queue": queue,
        "payload": json.dumps(payload),
        "cap": limit,
        "max_queued": settings.tenant_max_queued if quota else None,
    }
    if around is not None and not alone:
        raise ValueError("a statement around the submit is sent alone, with its commit")
    row = _alone(conn, params, around) if alone else conn.execute(_SUBMIT, params).one()
    if row is None:
        assert around is not None
        raise around.missing
    if not row[0]:
        _refuse_past_quota(settings, int(row[3]), queue)
        raise AssertionError("refused under the quota")  # pragma: no cover (the line above raised)
    return Inserted(Admission(send=bool(row[1]), in_flight=int(row[2]), cap=limit), created_at=row[4])


_TAKE = text("SELECT id, task_name, queue FROM protostar_take_turn(CAST(:tenant AS uuid), :queue, :cap)")


def take(conn: Connection, *, tenant_id: uuid.UUID, queue: str, limit: int) -> list[Released]:
    """Mark as sent the tenant's oldest waiting jobs on ``queue`` that fit under ``limit`` (none when its slots
    are full), and return them, oldest first; the caller sends them once this is committed. One statement
    (``protostar_take_turn``, migration 0015: the lock, the count of the jobs in flight, the ``UPDATE``): on an
    autocommit connection one round trip, which commits it; in a transaction the lock is held until that ends."""
    rows = conn.execute(_TAKE, {"tenant": tenant_id, "queue": queue, "cap": limit}).all()
    return [Released(r[0], r[1], r[2]) for r in rows]


def unsend(conn: Connection, *, job_ids: list[uuid.UUID]) -> None:
    """Taken jobs whose send failed wait their turn again, so that they do not hold their tenant's slots with no
    message to run them. (A message that left after all is dropped by the worker's claim, which takes only jobs
    marked sent; the job's next turn sends it again.)"""
    conn.execute(
        text(
            "UPDATE jobs SET dispatched_at = NULL, stage = :stage "
            "WHERE id = ANY(:ids) AND status = 'queued' AND dispatched_at IS NOT NULL"
        ),
        {"ids": job_ids, "stage": WAITING_TURN},
    )


def waiting(conn: Connection, *, older_than: object, limit: int) -> list[tuple[uuid.UUID, str]]:
    """(tenant, queue) pairs with jobs not sent: waiting their turn, or committed longer than the grace ago and
    never sent (an API that died between its commit and its send, before this version)."""
    rows = conn.execute(
        select(Job.tenant_id, Job.queue)
        .where(
            Job.status == QUEUED,
            Job.dispatched_at.is_(None),
            or_(Job.stage == WAITING_TURN, Job.created_at < older_than),
        )
        .group_by(Job.tenant_id, Job.queue)
        .limit(limit)
    ).all()
    return [(r[0], r[1]) for r in rows]
