"""All SQL on the webhook tables that the API needs: endpoints of a tenant, their delivery log, a ping."""

from __future__ import annotations

import uuid

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from protostar.constants import PING_EVENT, WebhookEvent
from protostar.db.models import WebhookDelivery, WebhookEndpoint
from protostar.db.owned import owned
from protostar.db.pages import newest_first
from protostar.errors import Conflict
from protostar.jobs.outbox import body
from protostar.webhooks.address import check
from protostar.webhooks.sign import new_secret


def create(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    url: str,
    events: list[WebhookEvent],
    secret: str | None,
    description: str | None,
    allow_private: bool,
    max_endpoints: int,
) -> WebhookEndpoint:
    """A new endpoint, its URL checked (``AddressRefused``, 422); ``Conflict`` past ``max_endpoints``."""
    check(url, allow_private=allow_private)
    count = session.scalar(select(func.count()).where(WebhookEndpoint.tenant_id == tenant_id)) or 0
    if count >= max_endpoints:
        raise Conflict(f"a tenant may have {max_endpoints} webhook endpoints; delete one first")
    endpoint = WebhookEndpoint(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        url=url,
        events=sorted({e.value for e in events}),
        secret=secret or new_secret(),
        description=description,
        enabled=True,
    )
    session.add(endpoint)
    session.flush()
    session.refresh(endpoint)
    return endpoint


def get(session: Session, *, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    return owned(session, WebhookEndpoint, endpoint_id, tenant_id=tenant_id, name="webhook")


def list_all(session: Session, *, tenant_id: uuid.UUID) -> list[WebhookEndpoint]:
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)
    return list(session.scalars(stmt.order_by(WebhookEndpoint.created_at.desc(), WebhookEndpoint.id.desc())))


def remove(session: Session, *, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> None:
    """Delete the endpoint with its deliveries (pending ones are never sent: their rows are gone)."""
    get(session, tenant_id=tenant_id, endpoint_id=endpoint_id)
    session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id))


def ping(session: Session, *, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> WebhookDelivery:
    """A pending ``ping`` delivery to the endpoint, whatever it subscribes to (the caller sends it after commit)."""
    endpoint = get(session, tenant_id=tenant_id, endpoint_id=endpoint_id)
    event_id = uuid.uuid4()
    delivery = WebhookDelivery(
        id=uuid.uuid4(),
        endpoint_id=endpoint.id,
        tenant_id=tenant_id,
        event_id=event_id,
        event_type=PING_EVENT,
        payload=body(event_id, PING_EVENT, {"webhook_id": str(endpoint.id)}),
    )
    session.add(delivery)
    session.flush()
    session.refresh(delivery)
    return delivery


def deliveries(
    session: Session, *, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, limit: int, cursor: str | None
) -> tuple[list[WebhookDelivery], str | None]:
    """The endpoint's deliveries, newest first; ``cursor`` continues the previous page."""
    get(session, tenant_id=tenant_id, endpoint_id=endpoint_id)
    stmt = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    return newest_first(session, stmt, model=WebhookDelivery, limit=limit, cursor=cursor)
