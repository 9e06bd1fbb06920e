"""One delivery attempt (``protostar.webhooks.deliver``) called directly against the live database, with an
``httpx.MockTransport`` as the receiver where the network is not the point: the address is checked again at
delivery time and the call goes to the checked address; a delivered row is not delivered again; a send lost
after the commit is made again by the reconciler."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Engine, text, update
from sqlalchemy.orm import Session

from protostar.constants import WebhookEvent
from protostar.db.models import WebhookDelivery, WebhookEndpoint
from protostar.errors import Conflict
from protostar.jobs.dispatch import Dispatcher
from protostar.jobs.reconcile import resend_webhooks
from protostar.settings import Settings
from protostar.webhooks import repo
from protostar.webhooks.address import AddressRefused
from protostar.webhooks.deliver import deliver
from protostar.webhooks.sign import verify
from tests.api.test_auth import create_key
from tests.conftest import Live, wait_for
from tests.webhooks.receiver import Receiver


@pytest.fixture(scope="module")
def tenant(live: Live) -> Iterator[httpx.Client]:
    with live.client(create_key(f"hooks-d-{uuid.uuid4().hex[:8]}")) as client:
        yield client


def unsent_ping(engine: Engine, tenant: httpx.Client, url: str) -> tuple[uuid.UUID, str]:
    """An endpoint for ``url`` and a ping delivery committed for it but never sent: (delivery id, secret)."""
    created = tenant.post("/v1/webhooks", json={"url": url, "events": ["job.failed"]}).json()
    with Session(engine) as session:
        endpoint = session.get(WebhookEndpoint, uuid.UUID(created["id"]))
        assert endpoint is not None
        delivery = repo.ping(session, tenant_id=endpoint.tenant_id, endpoint_id=endpoint.id)
        session.commit()
        return delivery.id, created["secret"]


def row(engine: Engine, delivery_id: uuid.UUID) -> WebhookDelivery:
    with Session(engine, expire_on_commit=False) as session:
        found = session.get(WebhookDelivery, delivery_id)
        assert found is not None
        return found


def test_the_address_is_checked_again_at_delivery(engine: Engine, settings: Settings, tenant: httpx.Client) -> None:
    delivery_id, _ = unsent_ping(engine, tenant, "http://127.0.0.1:9/hook")  # allowed when it was registered
    calls: list[httpx.Request] = []
    strict = settings.model_copy(update={"webhooks_allow_private": False})
    outcome = deliver(engine, strict, delivery_id, transport=httpx.MockTransport(calls.append))  # type: ignore[arg-type]
    assert outcome.status == "retry" and not calls  # refused before any connection
    refused = row(engine, delivery_id)
    assert refused.status == "pending" and refused.attempts == 1 and "private" in (refused.last_error or "")


def test_the_call_goes_to_the_checked_address_signed(engine: Engine, settings: Settings, tenant: httpx.Client) -> None:
    delivery_id, secret = unsent_ping(engine, tenant, "http://localhost:8123/hook?x=1")
    calls: list[httpx.Request] = []

    def receive(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(204)

    assert deliver(engine, settings, delivery_id, transport=httpx.MockTransport(receive)).status == "succeeded"
    (request,) = calls
    assert request.url.host in ("127.0.0.1", "::1") and request.url.port == 8123 and request.url.query == b"x=1"
    assert request.headers["host"] == "localhost:8123"  # the name resolved once, the address pinned
    assert request.headers["protostar-delivery"] == str(delivery_id)
    assert verify(secret, request.headers["protostar-signature"], request.content)
    delivered = row(engine, delivery_id)
    assert delivered.status == "succeeded" and delivered.last_status_code == 204 and delivered.delivered_at

    # Delivered: another message for it (a duplicate send) does nothing.
    assert deliver(engine, settings, delivery_id, transport=httpx.MockTransport(receive)).status == "skipped"
    assert len(calls) == 1


def test_https_keeps_the_name_for_tls_while_connecting_to_the_checked_address(
    engine: Engine, settings: Settings, tenant: httpx.Client
) -> None:
    delivery_id, _ = unsent_ping(engine, tenant, "https://localhost/hook")
    calls: list[httpx.Request] = []

    def receive(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503)

    outcome = deliver(engine, settings, delivery_id, transport=httpx.MockTransport(receive))
    assert outcome.status == "retry" and outcome.retry_in is not None and outcome.retry_in > 0
    (request,) = calls
    assert request.url.scheme == "https" and request.url.host in ("127.0.0.1", "::1") and request.url.port is None
    assert request.extensions["sni_hostname"] == "localhost"  # the certificate is checked against the name
    assert request.headers["host"] == "localhost"
    failed = row(engine, delivery_id)
    assert failed.last_status_code == 503 and failed.last_error == "the receiver answered HTTP 503"


def test_a_success_makes_the_endpoints_waiting_deliveries_due(
    engine: Engine, settings: Settings, tenant: httpx.Client
) -> None:
    first, _ = unsent_ping(engine, tenant, "http://localhost:8124/hook")
    with Session(engine) as session:
        endpoint_id = row(engine, first).endpoint_id
        second = repo.ping(session, tenant_id=row(engine, first).tenant_id, endpoint_id=endpoint_id).id
        session.commit()
    down = httpx.MockTransport(lambda request: httpx.Response(502))
    up = httpx.MockTransport(lambda request: httpx.Response(200))
    assert deliver(engine, settings, first, transport=down).status == "retry"
    with engine.begin() as conn:  # its backoff drawn long
        conn.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == first)
            .values(next_attempt_at=text("now() + interval '10 minutes'"))
        )
    assert deliver(engine, settings, first, transport=up).status == "skipped"  # not due

    back = deliver(engine, settings, second, transport=up)
    assert back.status == "succeeded" and back.woken == (first,)
    assert deliver(engine, settings, first, transport=up).status == "succeeded"  # due now, not in minutes


def test_a_lost_send_is_made_again_by_the_reconciler(
    engine: Engine, settings: Settings, tenant: httpx.Client, dispatcher: Dispatcher
) -> None:
    receiver = Receiver()
    receiver.start()
    try:
        delivery_id, receiver.secret = unsent_ping(engine, tenant, receiver.url)
        with engine.begin() as conn:  # as if the job ended a while ago and its worker died before the send
            conn.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id)
                .values(
                    created_at=text("created_at - make_interval(secs => :s)").bindparams(s=settings.reap_after + 5),
                    next_attempt_at=text("next_attempt_at - make_interval(secs => :s)").bindparams(
                        s=settings.reap_after + 5
                    ),
                )
            )
        assert resend_webhooks(dispatcher) >= 1
        wait_for(lambda: str(delivery_id) in {r.delivery_id for r in receiver.received()}, what="the resent ping")
        assert all(r.signed for r in receiver.received())
        wait_for(lambda: row(engine, delivery_id).status == "succeeded", what="the row to say so")
    finally:
        receiver.stop()


def test_registration_refuses_inside_addresses_with_the_setting_off(engine: Engine, tenant: httpx.Client) -> None:
    """What ``POST /v1/webhooks`` runs, with ``PROTOSTAR_WEBHOOKS_ALLOW_PRIVATE`` off (the test stack sets it on)."""
    delivery_id, _ = unsent_ping(engine, tenant, "http://127.0.0.1:9/x")
    tenant_id = row(engine, delivery_id).tenant_id

    def create(url: str, *, allow_private: bool = False, max_endpoints: int = 20) -> None:
        with Session(engine) as session:
            repo.create(
                session,
                tenant_id=tenant_id,
                url=url,
                events=[WebhookEvent.JOB_FAILED],
                secret=None,
                description=None,
                allow_private=allow_private,
                max_endpoints=max_endpoints,
            )

    for url in ("http://169.254.169.254/latest/meta-data/", "http://localhost:8000/", "http://[::1]/"):
        with pytest.raises(AddressRefused) as refused:
            create(url)
        assert refused.value.status == 422 and "private" in refused.value.message
    with pytest.raises(Conflict) as full:
        create("http://127.0.0.1:9/y", allow_private=True, max_endpoints=1)
    assert full.value.status == 409
