"""The client against the live system: upload, search, documents, chat tokens, jobs, summaries and errors."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from protostar.client import (
    AuthError,
    Client,
    InvalidRequest,
    NotFound,
    NotSupported,
    Reset,
    WaitTimeout,
)
from tests.conftest import Live
from tests.sse import read_events

FACT = "The Quorvane glass bridge in the town of Eddleby was opened on the fourth of June."


@pytest.fixture(scope="module")
def client(live: Live) -> Iterator[Client]:
    with Client(live.api_url, live.admin_key) as client:
        yield client


@pytest.fixture(scope="module")
def document_id(client: Client) -> str:
    body = (FACT + "\n\n" + "Eddleby is a small town with a market and a river. " * 5 + uuid.uuid4().hex).encode()
    upload = client.upload(body, filename="eddleby.txt", metadata={"source": "client-test"}, wait=True, timeout=180)
    assert upload.ok and not upload.duplicate, upload
    assert upload.job is not None and upload.job.status == "succeeded"
    assert upload.document.chunk_count > 0 and upload.document.metadata["source"] == "client-test"
    again = client.upload(body, filename="eddleby.txt")
    assert again.duplicate and again.document.id == upload.document.id
    return upload.document.id


def test_search_and_documents(client: Client, document_id: str) -> None:
    hits = client.search("When was the Quorvane glass bridge opened?", top_k=3)
    assert hits[0].document_id == document_id and hits[0].filename == "eddleby.txt"
    assert "Quorvane" in hits[0].text
    assert client.documents.get(document_id).status == "ready"
    assert document_id in {d.id for d in client.documents.list(limit=100).items}
    assert document_id in {d.id for d in client.documents.iterate(page_size=1)}


def test_chat_streams_tokens_that_join_to_the_persisted_answer(client: Client, document_id: str) -> None:
    session_id = client.sessions.create(title="client test")
    stream = client.chat(session_id, "When was the Quorvane glass bridge opened?")
    pieces = list(stream)
    assert not any(isinstance(p, Reset) for p in pieces)
    assert len(pieces) > 1
    answer = stream.answer()
    assert "".join(str(p) for p in pieces) == answer.text == stream.text
    assert any(s.document_id == document_id for s in answer.sources)
    session = client.sessions.get(session_id)
    assert [m.role for m in session.messages] == ["user", "assistant"]
    assert session.messages[1].content == answer.text

    summary = client.summarize(session_id=session_id, wait=True, timeout=180)
    assert summary.status == "succeeded", summary
    assert client.sessions.get(session_id).summary


def probe(api: httpx.Client, **body: object) -> str:
    response = api.post("/v1/probes", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def test_jobs_get_wait_events_cancel(client: Client, api: httpx.Client) -> None:
    quick = probe(api, queue="chat", steps=3, sleep=0.05)
    events = list(client.jobs.events(quick))
    assert events[-1].type == "done" and events[-1].data["status"] == "succeeded"
    assert [e.id for e in events] == [e.id for e in read_events(api, quick)]
    job = client.jobs.wait(quick, timeout=60)
    assert job.status == "succeeded" and job.progress.done == 3 and job.finished

    slow = probe(api, queue="chat", steps=1000, sleep=0.5)
    with pytest.raises(WaitTimeout):
        client.jobs.wait(slow, timeout=0.5)
    client.jobs.cancel(slow)
    assert client.jobs.wait(slow, timeout=60).status == "cancelled"


def test_jobs_list_and_retry_work_or_say_the_server_lacks_them(client: Client, api: httpx.Client) -> None:
    job_id = probe(api, queue="chat", steps=1)
    client.jobs.wait(job_id, timeout=60)
    try:
        page = client.jobs.list(limit=5)
    except NotSupported as exc:
        assert exc.status in (404, 405) and "GET /v1/jobs" in exc.message
    else:
        assert len(page.items) <= 5
    failed = probe(api, queue="chat", steps=1, fail="input")
    assert client.jobs.wait(failed, timeout=60).status == "failed"
    try:
        retried = client.jobs.retry(failed)
    except NotSupported as exc:
        assert exc.status in (404, 405) and "retry" in exc.message
    else:
        assert retried.id == failed


def test_errors_carry_the_api_code_message_and_status(live: Live, client: Client) -> None:
    with Client(live.api_url, "ps_wrong") as stranger, pytest.raises(AuthError) as denied:
        stranger.documents.list()
    assert denied.value.status == 401 and denied.value.code == "unauthorized"
    with pytest.raises(NotFound) as missing:
        client.jobs.get(str(uuid.uuid4()))
    assert missing.value.status == 404 and missing.value.code == "not_found" and "not found" in missing.value.message
    with pytest.raises(InvalidRequest) as unsupported:
        client.upload(b"\x00\x01\x02\xff" * 64, filename="blob.bin")
    assert unsupported.value.status == 415 and unsupported.value.code == "unsupported_media_type"
