"""The parts of webhooks that need no stack: the address check, the signature, the events of an ending."""

from __future__ import annotations

import ipaddress
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from protostar.constants import JobStatus, WebhookEvent
from protostar.errors import ValidationFailed
from protostar.jobs.ending import Ending
from protostar.jobs.outbox import events_of
from protostar.webhooks.address import AddressRefused, blocked, check, parse
from protostar.webhooks.sign import signature, verify


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # the cloud metadata service
        "100.64.0.1",  # shared (CGNAT)
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::",
    ],
)
def test_addresses_inside_a_network_are_blocked(address: str) -> None:
    assert blocked(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_not(address: str) -> None:
    assert not blocked(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",
        "https://[::1]/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:10.0.0.1]/",
        "http://0x7f000001/",  # 127.0.0.1 spelt in hex: resolved, then refused
    ],
)
def test_urls_to_inside_addresses_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(AddressRefused) as refused:
        check(url, allow_private=False)
    assert isinstance(refused.value, ValidationFailed) and refused.value.status == 422
    if "0x7f" not in url:
        assert check(url, allow_private=True).ip


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/x", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("http:///nohost", "no host"),
        ("https://user:pw@example.com/", "credentials"),
        ("http://example.com:99999/", "not a valid URL"),
    ],
)
def test_only_plain_http_urls(url: str, why: str) -> None:
    with pytest.raises(AddressRefused, match=why):
        parse(url)


def test_a_public_ip_literal_is_pinned_without_dns() -> None:
    target = check("https://1.1.1.1:8443/x?y=1", allow_private=False)
    assert (target.ip, target.port, target.host, target.scheme) == ("1.1.1.1", 8443, "1.1.1.1", "https")


def test_the_signature_verifies_and_refuses_tampering_and_replays() -> None:
    body = b'{"id":"e","type":"ping"}'
    now = int(time.time())
    header = signature("whsec_test", now, body)
    assert header.startswith(f"t={now},v1=")
    assert verify("whsec_test", header, body)
    assert not verify("whsec_other", header, body)
    assert not verify("whsec_test", header, body + b" ")
    assert not verify("whsec_test", signature("whsec_test", now - 3600, body), body)
    assert not verify("whsec_test", "garbage", body)


def test_an_ending_makes_its_events() -> None:
    job_id = uuid.uuid4()
    doc = {"document_id": "d1", "kind": "upload"}

    def types(kind: str, payload: dict[str, str], ending: Ending) -> list[WebhookEvent]:
        return [t for t, _ in events_of(job_id=job_id, kind=kind, payload=payload, ending=ending)]

    ok = Ending(JobStatus.SUCCEEDED, result={"chunks": 3})
    failed = Ending(JobStatus.FAILED, "input_rejected", "empty")
    cancelled = Ending(JobStatus.CANCELLED, "cancelled", "cancelled")
    assert types("ingest", doc, ok) == [WebhookEvent.JOB_SUCCEEDED, WebhookEvent.DOCUMENT_READY]
    assert types("ingest", doc, failed) == [WebhookEvent.JOB_FAILED, WebhookEvent.DOCUMENT_FAILED]
    assert types("ingest", doc, cancelled) == [WebhookEvent.JOB_CANCELLED, WebhookEvent.DOCUMENT_FAILED]
    assert types("summary_session", {"session_id": "s"}, ok) == [
        WebhookEvent.JOB_SUCCEEDED,
        WebhookEvent.SUMMARY_WRITTEN,
    ]
    assert types("chat", {"session_id": "s", "message_id": "m"}, failed) == [WebhookEvent.JOB_FAILED]
    (_, data), (_, document) = events_of(job_id=job_id, kind="ingest", payload=doc, ending=failed)
    assert data["job"]["error"] == {"code": "input_rejected", "message": "empty"} and data["document_id"] == "d1"
    assert document == {"document_id": "d1", "job_id": str(job_id), "error": data["job"]["error"]}


def test_the_readmes_receiver_snippet_verifies_our_signatures() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = next(b for b in readme.split("```python\n")[1:] if "def verify(secret" in b).split("```")[0]
    namespace: dict[str, Any] = {}
    exec(block, namespace)  # the README's own snippet
    body = b'{"id":"e","type":"job.succeeded","data":{}}'
    header = signature("whsec_readme", int(time.time()), body)
    assert namespace["verify"]("whsec_readme", header, body)
    assert not namespace["verify"]("whsec_readme", header, body.replace(b"succeeded", b"failed"))
    assert not namespace["verify"]("whsec_wrong", header, body)
