"""Webhooks on the live stack, with a local receiver that checks every signature: a job's end is delivered
once, signed; a receiver that is down gets every event once it is back, while the jobs end on time; the delivery
log; a ping; the endpoint routes. (The address check that refuses private URLs, which the test stack allows so
the receiver can be local, is tested in tests/unit/test_webhook_parts.py.)"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.test_auth import create_key
from tests.api.test_jobs import submit, wait_status
from tests.conftest import Live, wait_for
from tests.corpus_files import CORPUS
from tests.webhooks.receiver import Receiver


@pytest.fixture(scope="module")
def tenant(live: Live) -> Iterator[httpx.Client]:
    """An admin key of a tenant of its own: no other test's jobs reach these endpoints."""
    with live.client(create_key(f"hooks-{uuid.uuid4().hex[:8]}", admin=True)) as client:
        yield client


@pytest.fixture
def receiver(tenant: httpx.Client) -> Iterator[Receiver]:
    """A receiver, and after the test none of the tenant's endpoints left (none retries into later tests)."""
    receiver = Receiver()
    yield receiver
    receiver.stop()
    for hook in tenant.get("/v1/webhooks").json()["items"]:
        tenant.delete(f"/v1/webhooks/{hook['id']}")


def register(api: httpx.Client, receiver: Receiver, events: list[str]) -> dict[str, Any]:
    response = api.post("/v1/webhooks", json={"url": receiver.url, "events": events, "description": "test"})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    receiver.secret = created["secret"]
    return created


def deliveries(api: httpx.Client, webhook_id: str, **params: Any) -> list[dict[str, Any]]:
    response = api.get(f"/v1/webhooks/{webhook_id}/deliveries", params=params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def test_a_jobs_end_is_delivered_once_signed_and_logged(tenant: httpx.Client, receiver: Receiver) -> None:
    receiver.start()
    hook = register(tenant, receiver, ["job.succeeded", "job.failed"])
    assert hook["secret"].startswith("whsec_") and hook["events"] == ["job.failed", "job.succeeded"]
    shown = tenant.get(f"/v1/webhooks/{hook['id']}").json()
    assert "secret" not in shown and shown["url"] == receiver.url and shown["enabled"] is True
    assert all("secret" not in h for h in tenant.get("/v1/webhooks").json()["items"])

    ok, failed = submit(tenant, queue="chat", steps=1), submit(tenant, queue="chat", steps=1, fail="input")
    wait_status(tenant, ok, "succeeded")
    wait_status(tenant, failed, "failed")
    wait_for(lambda: receiver.of_job(ok, "job.succeeded") and receiver.of_job(failed, "job.failed"), what="both")
    (success,) = receiver.of_job(ok, "job.succeeded")
    (failure,) = receiver.of_job(failed, "job.failed")
    assert success.signed and failure.signed
    assert success.body["type"] == "job.succeeded" and success.body["data"]["job"]["status"] == "succeeded"
    assert failure.body["data"]["job"]["error"]["code"] == "input_rejected"

    log = wait_for(
        lambda: (items := deliveries(tenant, hook["id"])) and all(d["status"] == "succeeded" for d in items) and items,
        what="the log to show both delivered",
    )
    by_id = {d["id"]: d for d in log}
    assert set(by_id) == {success.delivery_id, failure.delivery_id}
    entry = by_id[success.delivery_id]
    assert entry["job_id"] == ok and entry["event_type"] == "job.succeeded" and entry["event_id"] == success.body["id"]
    assert entry["attempts"] == 1 and entry["last_status_code"] == 200 and entry["last_error"] is None
    assert entry["delivered_at"] and entry["next_attempt_at"] is None


def test_a_receiver_that_is_down_gets_every_event_once_it_is_back(tenant: httpx.Client, receiver: Receiver) -> None:
    hook = register(tenant, receiver, ["job.succeeded"])  # the receiver is not started: its port is closed
    jobs = [submit(tenant, queue="chat", steps=1) for _ in range(3)]
    for job_id in jobs:  # the jobs end on time whatever the receiver does
        wait_status(tenant, job_id, "succeeded")

    def retried() -> bool:
        items = deliveries(tenant, hook["id"])
        return len(items) == 3 and all(d["attempts"] >= 2 and d["status"] == "pending" for d in items)

    wait_for(retried, timeout=60, what="every delivery to have failed at least twice")
    item = deliveries(tenant, hook["id"])[0]
    assert item["last_status_code"] is None and "connect" in item["last_error"] and item["delivered_at"] is None

    receiver.start()
    wait_for(lambda: all(receiver.of_job(j, "job.succeeded") for j in jobs), timeout=60, what="every event")
    wait_for(lambda: all(d["status"] == "succeeded" for d in deliveries(tenant, hook["id"])), what="the log to agree")
    counts = Counter(r.delivery_id for r in receiver.received())
    assert len(counts) == 3 and set(counts.values()) == {1}  # each delivery once, none lost
    assert all(r.signed for r in receiver.received())


def test_a_documents_ingest_tells_ready_or_failed(tenant: httpx.Client, receiver: Receiver) -> None:
    receiver.start()
    register(tenant, receiver, ["document.ready", "document.failed"])
    note = f"Webhook test note {uuid.uuid4()}: the heron stood in the reeds all morning.".encode()
    ready = tenant.post("/v1/documents", files={"file": ("note.txt", note)}, timeout=60).json()
    encrypted = (CORPUS / "password.pdf").read_bytes()
    failed = tenant.post("/v1/documents", files={"file": ("password.pdf", encrypted)}, timeout=60).json()

    def events() -> dict[str, Any]:
        return {r.body["data"]["document_id"]: r for r in receiver.received()}

    wait_for(lambda: {ready["document_id"], failed["document_id"]} <= set(events()), timeout=120, what="both")
    assert events()[ready["document_id"]].event == "document.ready"
    gone = events()[failed["document_id"]]
    assert gone.event == "document.failed" and "encrypted" in gone.body["data"]["error"]["message"]
    assert gone.body["data"]["job_id"] == failed["job_id"] and all(r.signed for r in receiver.received())
    assert len(receiver.received()) == 2


def test_a_ping_the_log_pages_and_a_gone_receiver_disables_its_endpoint(
    tenant: httpx.Client, receiver: Receiver, live: Live
) -> None:
    receiver.start()
    hook = register(tenant, receiver, ["document.ready"])
    pings = []
    for _ in range(3):
        response = tenant.post(f"/v1/webhooks/{hook['id']}/ping")
        assert response.status_code == 202, response.text
        assert response.json()["event_type"] == "ping" and response.json()["status"] == "pending"
        pings.append(response.json()["id"])
    wait_for(lambda: len(receiver.received()) == 3, what="three pings")
    assert {r.delivery_id for r in receiver.received()} == set(pings)
    assert all(
        r.event == "ping" and r.signed and r.body["data"]["webhook_id"] == hook["id"] for r in receiver.received()
    )

    seen, cursor = [], None
    while True:
        page = tenant.get(
            f"/v1/webhooks/{hook['id']}/deliveries", params={"limit": 2, **({"cursor": cursor} if cursor else {})}
        ).json()
        seen += [d["id"] for d in page["items"]]
        if not (cursor := page["next_cursor"]):
            break
    assert seen == list(reversed(pings))  # newest first, no repeats

    receiver.answer = 410
    gone = tenant.post(f"/v1/webhooks/{hook['id']}/ping").json()["id"]
    wait_for(lambda: deliveries(tenant, hook["id"])[0]["status"] == "failed", what="the 410 to fail it")
    assert deliveries(tenant, hook["id"])[0]["id"] == gone
    endpoint = tenant.get(f"/v1/webhooks/{hook['id']}").json()
    assert endpoint["enabled"] is False and "410" in endpoint["disabled_reason"]

    assert tenant.delete(f"/v1/webhooks/{hook['id']}").status_code == 204
    assert tenant.get(f"/v1/webhooks/{hook['id']}").status_code == 404

    # The deliveries' log lines name ids, never the URL (it may hold a token) or the secret.
    def logs() -> str | None:
        text = live.log.read_text()
        return text if f"delivery_id={gone}" in text else None

    logged = wait_for(logs, what="the 410's log line")
    assert receiver.url not in logged and f":{receiver.port}/" not in logged and hook["secret"] not in logged
    assert tenant.get(f"/v1/webhooks/{hook['id']}/deliveries").status_code == 404


def test_bad_registrations_are_422_and_another_tenants_endpoint_is_404(tenant: httpx.Client, api: httpx.Client) -> None:
    for body, why in [
        ({"url": "ftp://example.com/x", "events": ["job.failed"]}, "http or https"),
        ({"url": "http://example.com/x", "events": ["job.exploded"]}, "events"),
        ({"url": "http://example.com/x", "events": []}, "events"),
        ({"url": "http://example.com/x", "events": ["job.failed"], "secret": "short"}, "secret"),
        ({"url": "http://no-such-host.invalid/x", "events": ["job.failed"]}, "does not resolve"),
    ]:
        response = tenant.post("/v1/webhooks", json=body)
        assert response.status_code == 422, (body, response.text)
        assert why in response.json()["error"]["message"], response.text
    mine = tenant.post(
        "/v1/webhooks", json={"url": "http://127.0.0.1:9/x", "events": ["job.failed"], "secret": "s" * 20}
    ).json()
    assert mine["secret"] == "s" * 20
    assert api.get(f"/v1/webhooks/{mine['id']}").status_code == 404
    assert api.delete(f"/v1/webhooks/{mine['id']}").status_code == 404
    assert api.post(f"/v1/webhooks/{mine['id']}/ping").status_code == 404
    assert tenant.delete(f"/v1/webhooks/{mine['id']}").status_code == 204
