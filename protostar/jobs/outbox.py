"""The webhook outbox: the events a job's end makes, written as delivery rows in the transaction that ends it
(``jobs.repo.finish``), then sent to the ``webhooks`` queue after the commit.

A receiver can never delay or fail a job: ending one costs one small ``INSERT … SELECT`` per event, a part of
the ending's one statement on the worker (nothing written when the tenant has no endpoint for it), and the HTTP
call happens later on the webhooks worker (``protostar.webhooks.deliver``). The row is the truth: a send lost
after the commit (the worker killed, the broker away) is made again by the reconciler (:func:`lost`), and a
delivery runs only after claiming its row, so a second send is harmless.

Events per ending: every job ends ``job.succeeded``, ``job.failed`` or ``job.cancelled``; an ingest also
``document.ready`` (succeeded) or ``document.failed`` (failed or cancelled, as the document's status says); a
summary that succeeded ``summary.written``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import BindParameter, Connection, and_, bindparam, func, insert, literal, or_, select, text, update

from protostar.constants import DeliveryStatus, JobKind, JobStatus, Queue, TaskName, WebhookEvent
from protostar.db.models import WebhookDelivery, WebhookEndpoint
from protostar.jobs.ending import Ending
from protostar.jobs.kinds import send_options
from protostar.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)

PENDING = DeliveryStatus.PENDING.value
RESEND_BATCH = 500  # lost sends made again per reconciler run
TARGET_KEYS = ("document_id", "session_id")  # payload keys a job's event carries

_JOB_EVENTS = {
    JobStatus.SUCCEEDED: WebhookEvent.JOB_SUCCEEDED,
    JobStatus.FAILED: WebhookEvent.JOB_FAILED,
    JobStatus.CANCELLED: WebhookEvent.JOB_CANCELLED,
}
_SUMMARIES = (JobKind.SUMMARY_SESSION.value, JobKind.SUMMARY_DOCUMENT.value)


def events_of(
    *, job_id: uuid.UUID, kind: str, payload: dict[str, Any], ending: Ending
) -> list[tuple[WebhookEvent, dict[str, Any]]]:
    """The events (type, data) of a job's ending."""
    job: dict[str, Any] = {
        "id": str(job_id),
        "kind": kind,
        "status": ending.status.value,
        "error": {"code": ending.code, "message": ending.message} if ending.status == JobStatus.FAILED else None,
        "result": ending.result,
    }
    targets = {k: payload[k] for k in TARGET_KEYS if k in payload}
    events: list[tuple[WebhookEvent, dict[str, Any]]] = [(_JOB_EVENTS[ending.status], {"job": job, **targets})]
    if kind == JobKind.INGEST.value and ending.status == JobStatus.SUCCEEDED:
        events.append((WebhookEvent.DOCUMENT_READY, {"document_id": targets.get("document_id"), "job_id": str(job_id)}))
    elif kind == JobKind.INGEST.value:  # failed or cancelled: the document's status is ``failed`` either way
        error = {"code": ending.code, "message": ending.message}
        data = {"document_id": targets.get("document_id"), "job_id": str(job_id), "error": error}
        events.append((WebhookEvent.DOCUMENT_FAILED, data))
    elif kind in _SUMMARIES and ending.status == JobStatus.SUCCEEDED:
        events.append((WebhookEvent.SUMMARY_WRITTEN, {"job_id": str(job_id), **targets, "summary": ending.result}))
    return events


def body(event_id: uuid.UUID, event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """An event as a receiver gets it (the delivery's ``payload``)."""
    return {"id": str(event_id), "type": event_type, "created_at": datetime.now(UTC).isoformat(), "data": data}


def fan_out(
    conn: Connection, *, tenant_id: uuid.UUID, job_id: uuid.UUID, kind: str, payload: dict[str, Any], ending: Ending
) -> list[uuid.UUID]:
    """In the caller's transaction: one pending delivery per event of this ending and enabled endpoint of the
    tenant subscribed to it; their ids."""
    made: list[uuid.UUID] = []
    for event_type, data in events_of(job_id=job_id, kind=kind, payload=payload, ending=ending):
        event_id = uuid.uuid4()
        rows = (
            select(
                func.gen_random_uuid(),
                WebhookEndpoint.id,
                WebhookEndpoint.tenant_id,
                literal(event_id, WebhookDelivery.event_id.type),
                literal(event_type.value),
                literal(job_id, WebhookDelivery.job_id.type),
                literal(body(event_id, event_type.value, data), WebhookDelivery.payload.type),
            )
            .where(
                WebhookEndpoint.tenant_id == tenant_id,
                WebhookEndpoint.enabled.is_(True),
                WebhookEndpoint.events.contains([event_type.value]),
            )
            .order_by(WebhookEndpoint.created_at)
        )
        columns = ("id", "endpoint_id", "tenant_id", "event_id", "event_type", "job_id", "payload")
        insert_rows = insert(WebhookDelivery).from_select(columns, rows).returning(WebhookDelivery.id)
        made += conn.scalars(insert_rows)
    return made


_COLUMNS = "id, endpoint_id, tenant_id, event_id, event_type, job_id, payload"


@dataclass(frozen=True)
class EventSql:
    """One event's ``INSERT … SELECT`` of delivery rows, for a statement that names the ended job ``source``."""

    sql: str
    params: dict[str, Any]
    binds: list[BindParameter[Any]]


def fan_out_sql(
    source: str, *, job_id: uuid.UUID, kind: str, payload: dict[str, Any], ending: Ending
) -> list[EventSql]:
    """:func:`fan_out` as parts of one statement (``jobs.repo.finish``): for each event of the ending, an
    ``INSERT … SELECT … RETURNING id`` of its deliveries, reading the job's id and tenant from the CTE ``source``
    (no row there: nothing is written)."""
    parts = []
    for i, (event_type, data) in enumerate(events_of(job_id=job_id, kind=kind, payload=payload, ending=ending)):
        event_id = uuid.uuid4()
        event = f"CAST(:o{i}_type AS varchar)"
        sql = (
            f"INSERT INTO webhook_deliveries ({_COLUMNS}) "  # noqa: S608 (names and placeholders: values are bound)
            f"SELECT gen_random_uuid(), e.id, e.tenant_id, :o{i}_event, {event}, {source}.id, :o{i}_body "
            f"FROM webhook_endpoints AS e JOIN {source} ON e.tenant_id = {source}.tenant_id "
            f"WHERE e.enabled AND {event} = ANY(e.events) ORDER BY e.created_at RETURNING id"
        )
        params: dict[str, Any] = {f"o{i}_event": event_id, f"o{i}_type": event_type.value}
        params[f"o{i}_body"] = body(event_id, event_type.value, data)
        parts.append(EventSql(sql, params, [bindparam(f"o{i}_body", type_=WebhookDelivery.payload.type)]))
    return parts


def unsent_of_job(conn: Connection, *, job_id: uuid.UUID) -> list[uuid.UUID]:
    """The job's deliveries not sent yet (made by its ending, just committed)."""
    stmt = select(WebhookDelivery.id).where(
        WebhookDelivery.job_id == job_id, WebhookDelivery.status == PENDING, WebhookDelivery.sent_at.is_(None)
    )
    return list(conn.scalars(stmt))


def lost(conn: Connection, *, older_than: float, limit: int = RESEND_BATCH) -> list[uuid.UUID]:
    """Pending deliveries whose send was lost: never sent ``older_than`` s after they were made, or due that long
    ago with no attempt holding them (a retry's countdown message died with its worker)."""
    ago = text("now() - make_interval(secs => :ago)").bindparams(ago=older_than)
    stmt = (
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.status == PENDING,
            func.coalesce(WebhookDelivery.sent_at, WebhookDelivery.created_at) < ago,
            WebhookDelivery.next_attempt_at < ago,
            or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until < func.now()),
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    )
    return list(conn.scalars(stmt))


def mark_sent(conn: Connection, ids: Iterable[uuid.UUID]) -> None:
    ids = list(ids)
    if ids:
        conn.execute(
            update(WebhookDelivery)
            .where(and_(WebhookDelivery.id.in_(ids), WebhookDelivery.status == PENDING))
            .values(sent_at=func.now())
        )


def send(celery: Celery, settings: Settings, delivery_id: uuid.UUID, *, countdown: float | None = None) -> None:
    """Send one delivery's task to the ``webhooks`` queue (a second send is harmless: it claims the row)."""
    options: dict[str, Any] = dict(send_options(settings, Queue.WEBHOOKS.value))
    if countdown:
        options["countdown"] = countdown
    celery.send_task(
        TaskName.WEBHOOK_DELIVER.value,
        kwargs={"delivery_id": str(delivery_id)},
        queue=Queue.WEBHOOKS.value,
        retry=False,
        ignore_result=True,
        **options,
    )
