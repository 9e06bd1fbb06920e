"""Webhooks: a tenant's endpoints (create, list, get, delete), a test ping and each endpoint's delivery log.

The deliveries themselves are made by the webhooks worker (``protostar.webhooks.deliver``); a ping is a delivery
row committed here and sent after the commit (if that send is lost, the reconciler sends it).
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response

from protostar.api.deps import PrincipalDep, SessionDep, StateDep
from protostar.api.schemas import CONFLICT
from protostar.api.webhook_schemas import (
    DeliveryOut,
    DeliveryPage,
    WebhookCreated,
    WebhookIn,
    WebhookList,
    WebhookOut,
)
from protostar.jobs.dispatch import BROKER_ERRORS
from protostar.webhooks import repo

router = APIRouter(prefix="/v1", tags=["webhooks"])


@router.post("/webhooks", status_code=201, response_model=WebhookCreated, responses=CONFLICT)
def create_webhook(body: WebhookIn, principal: PrincipalDep, session: SessionDep, state: StateDep) -> WebhookCreated:
    """Register an endpoint for some event types. The answer holds the signing secret, this once. ``422`` for a
    URL that is not http(s) or whose host resolves to a loopback, link-local, private or reserved address;
    ``409`` past ``PROTOSTAR_WEBHOOKS_MAX_ENDPOINTS``."""
    settings = state.settings
    endpoint = repo.create(
        session,
        tenant_id=principal.tenant_id,
        url=body.url,
        events=body.events,
        secret=body.secret,
        description=body.description,
        allow_private=settings.webhooks_allow_private,
        max_endpoints=settings.webhooks_max_endpoints,
    )
    session.commit()
    return WebhookCreated(**WebhookOut.of(endpoint).model_dump(), secret=endpoint.secret)


@router.get("/webhooks", response_model=WebhookList)
def list_webhooks(principal: PrincipalDep, session: SessionDep) -> WebhookList:
    """Your endpoints, newest first (never their secrets)."""
    return WebhookList(items=[WebhookOut.of(e) for e in repo.list_all(session, tenant_id=principal.tenant_id)])


@router.get("/webhooks/{webhook_id}", response_model=WebhookOut)
def get_webhook(webhook_id: uuid.UUID, principal: PrincipalDep, session: SessionDep) -> WebhookOut:
    return WebhookOut.of(repo.get(session, tenant_id=principal.tenant_id, endpoint_id=webhook_id))


@router.delete("/webhooks/{webhook_id}", status_code=204)
def delete_webhook(webhook_id: uuid.UUID, principal: PrincipalDep, session: SessionDep) -> Response:
    """``204``: the endpoint and its delivery log are gone; its pending deliveries are never sent."""
    repo.remove(session, tenant_id=principal.tenant_id, endpoint_id=webhook_id)
    session.commit()
    return Response(status_code=204)


@router.post("/webhooks/{webhook_id}/ping", status_code=202, response_model=DeliveryOut)
def ping_webhook(webhook_id: uuid.UUID, principal: PrincipalDep, session: SessionDep, state: StateDep) -> DeliveryOut:
    """Send a ``ping`` event to the endpoint (whatever it subscribes to); follow it in its deliveries."""
    delivery = repo.ping(session, tenant_id=principal.tenant_id, endpoint_id=webhook_id)
    session.commit()
    with contextlib.suppress(*BROKER_ERRORS):  # committed: if this send is lost, the reconciler makes it
        state.clients.dispatcher.send_deliveries([delivery.id])
    return DeliveryOut.of(delivery)


@router.get("/webhooks/{webhook_id}/deliveries", response_model=DeliveryPage)
def list_deliveries(
    webhook_id: uuid.UUID,
    principal: PrincipalDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> DeliveryPage:
    """The endpoint's deliveries, newest first: status (``pending``, ``succeeded``, ``failed``), attempts, the
    last answer's status code or error, ``delivered_at``; pass ``next_cursor`` back as ``cursor``."""
    rows, next_cursor = repo.deliveries(
        session, tenant_id=principal.tenant_id, endpoint_id=webhook_id, limit=limit, cursor=cursor
    )
    return DeliveryPage(items=[DeliveryOut.of(d) for d in rows], next_cursor=next_cursor)
