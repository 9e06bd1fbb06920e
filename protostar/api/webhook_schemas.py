"""Request and response bodies of ``/v1/webhooks`` (kept apart from ``schemas`` so that module stays small).

A webhook's secret appears in one answer only, the one that created it; every other answer leaves it out.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field

from protostar.api.schemas import Text
from protostar.constants import DeliveryStatus, WebhookEvent
from protostar.db.models import WebhookDelivery, WebhookEndpoint
from protostar.webhooks.address import MAX_URL_LENGTH


def _unique(events: list[WebhookEvent]) -> list[WebhookEvent]:
    if len(set(events)) != len(events):
        raise ValueError("events may not repeat")
    return events


class WebhookIn(BaseModel):
    url: Annotated[Text, Field(min_length=1, max_length=MAX_URL_LENGTH)] = Field(
        description="http or https; its host must resolve to public addresses only (else 422)"
    )
    events: Annotated[list[WebhookEvent], AfterValidator(_unique), Field(min_length=1, max_length=len(WebhookEvent))]
    secret: Annotated[Text, Field(min_length=16, max_length=200)] | None = Field(
        None, description="signs every delivery (HMAC-SHA256); generated (whsec_…) when left out"
    )
    description: Annotated[Text, Field(max_length=200)] | None = None


class WebhookOut(BaseModel):
    id: uuid.UUID
    url: str
    events: list[str]
    description: str | None
    enabled: bool = Field(description="false once the receiver answered 410 Gone (then register it again)")
    disabled_reason: str | None
    created_at: datetime

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> WebhookOut:
        return cls(
            id=endpoint.id,
            url=endpoint.url,
            events=list(endpoint.events),
            description=endpoint.description,
            enabled=endpoint.enabled,
            disabled_reason=endpoint.disabled_reason,
            created_at=endpoint.created_at,
        )


class WebhookCreated(WebhookOut):
    secret: str = Field(description="the signing secret: shown in this answer only; keep it with your receiver")


class WebhookList(BaseModel):
    items: list[WebhookOut]


class DeliveryOut(BaseModel):
    id: uuid.UUID = Field(description="the Protostar-Delivery header: deduplicate on it")
    webhook_id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    job_id: uuid.UUID | None
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None = Field(description="the HTTP status of the last attempt, if one answered")
    last_error: str | None = Field(description="which way the last attempt failed, in a few words")
    next_attempt_at: datetime | None = Field(description="while pending: when the next attempt is due")
    created_at: datetime
    delivered_at: datetime | None

    @classmethod
    def of(cls, delivery: WebhookDelivery) -> DeliveryOut:
        pending = delivery.status == DeliveryStatus.PENDING
        return cls(
            id=delivery.id,
            webhook_id=delivery.endpoint_id,
            event_id=delivery.event_id,
            event_type=delivery.event_type,
            job_id=delivery.job_id,
            status=DeliveryStatus(delivery.status),
            attempts=delivery.attempts,
            last_status_code=delivery.last_status_code,
            last_error=delivery.last_error,
            next_attempt_at=delivery.next_attempt_at if pending else None,
            created_at=delivery.created_at,
            delivered_at=delivery.delivered_at,
        )


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None
