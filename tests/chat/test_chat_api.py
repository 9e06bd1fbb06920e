"""Chat end to end on the live system and the real local model: tokens streamed over SSE, persisted answers
with sources, resume, cancel, and tenant isolation."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from sqlalchemy import Connection, Engine, text

from tests.api.test_auth import create_key
from tests.api.test_jobs import wait_status
from tests.conftest import Live, wait_for
from tests.ingest.test_documents_api import upload
from tests.sse import read_events

FACT = "The Zorblat lantern festival is held in the village of Quillby every year on the ninth of March."


@pytest.fixture(scope="module")
def api_module(live: Live) -> httpx.Client:
    with live.client() as client:
        yield client  # type: ignore[misc]


@pytest.fixture(scope="module")
def document_id(api_module: httpx.Client) -> str:
    body = (FACT + "\n\n" + "Quillby is a quiet village with one bakery and a small harbour. " * 5).encode()
    response = upload(api_module, "quillby.txt", body + uuid.uuid4().hex.encode())
    wait_status(api_module, response.json()["job_id"], "succeeded", timeout=120)
    return str(response.json()["document_id"])


def new_session(api: httpx.Client) -> str:
    response = api.post("/v1/sessions", json={"title": "test"})
    assert response.status_code == 201, response.text
    return str(response.json()["session_id"])


def ask(api: httpx.Client, session_id: str, content: str) -> dict[str, str]:
    response = api.post(f"/v1/sessions/{session_id}/messages", json={"content": content})
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


def test_tokens_stream_and_join_to_the_persisted_answer_with_sources(
    api_module: httpx.Client, document_id: str
) -> None:
    session_id = new_session(api_module)
    accepted = ask(api_module, session_id, "When is the Zorblat lantern festival held?")
    assert accepted["events_url"].endswith(f"/v1/jobs/{accepted['job_id']}/events")
    events = list(read_events(api_module, accepted["job_id"], timeout=120))
    kinds = [e.event for e in events]
    assert kinds[-1] == "done" and events[-1].data["status"] == "succeeded", events[-3:]
    streamed = "".join(e.data["text"] for e in events if e.event == "token")
    assert kinds.count("token") > 1 and streamed.strip()
    # Progress before the first token is on the event stream only; the row has the stage the answer ended in.
    stages = [(e.data["stage"], e.data["done"]) for e in events if e.event == "progress"]
    assert stages[:3] == [("retrieve", 0), ("retrieve", 1), ("generate", 0)], stages
    assert stages[-1][0] == "generate" and stages[-1][1] > 0

    job = wait_status(api_module, accepted["job_id"], "succeeded")
    assert job["progress"]["stage"] == "generate", job["progress"]  # type: ignore[index]
    result = job["result"]
    assert result["answer"] == streamed  # type: ignore[index]
    assert result["usage"]["completion_tokens"] > 0  # type: ignore[index]
    assert any(s["document_id"] == document_id for s in result["sources"])  # type: ignore[index]

    messages = api_module.get(f"/v1/sessions/{session_id}").json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["id"] == accepted["message_id"]
    assert messages[1]["content"] == streamed and messages[1]["status"] == "complete"
    assert messages[1]["id"] == result["message_id"] and messages[1]["reply_to"] == accepted["message_id"]  # type: ignore[index]


def test_a_reader_that_reconnects_with_last_event_id_misses_nothing(api_module: httpx.Client) -> None:
    session_id = new_session(api_module)
    accepted = ask(api_module, session_id, "Tell me about Quillby.")
    first = list(read_events(api_module, accepted["job_id"], stop_after=4, timeout=120))
    rest = list(read_events(api_module, accepted["job_id"], last_event_id=first[-1].id, timeout=120))
    ids = [e.id for e in first + rest]
    assert len(ids) == len(set(ids))
    job = wait_status(api_module, accepted["job_id"], "succeeded")
    joined = "".join(e.data["text"] for e in first + rest if e.event == "token")
    assert joined == job["result"]["answer"]  # type: ignore[index]


def test_the_second_question_sees_the_first_turn(api_module: httpx.Client) -> None:
    session_id = new_session(api_module)
    first = ask(api_module, session_id, "My name is Ada.")
    wait_status(api_module, first["job_id"], "succeeded", timeout=120)
    second = ask(api_module, session_id, "What is my name?")
    job = wait_status(api_module, second["job_id"], "succeeded", timeout=120)
    assert job["result"]["answer"]  # type: ignore[index]
    roles = [m["role"] for m in api_module.get(f"/v1/sessions/{session_id}").json()["messages"]]
    assert roles == ["user", "assistant", "user", "assistant"]


def test_cancel_mid_answer_stops_within_a_second_and_keeps_the_partial_answer(api_module: httpx.Client) -> None:
    session_id = new_session(api_module)
    accepted = ask(api_module, session_id, "Write a very long story about a lighthouse keeper, with many chapters.")
    seen = list(read_events(api_module, accepted["job_id"], stop_after=50, timeout=120))
    assert any(e.event == "token" for e in seen), seen
    assert api_module.post(f"/v1/jobs/{accepted['job_id']}/cancel").status_code == 202
    asked = time.monotonic()
    job = wait_status(api_module, accepted["job_id"], "cancelled", "succeeded", timeout=30)
    if job["status"] == "succeeded":
        pytest.skip("the model finished its answer before the cancel arrived")
    assert time.monotonic() - asked < 3  # within a second, plus polling
    answer = wait_for(
        lambda: next(
            (m for m in api_module.get(f"/v1/sessions/{session_id}").json()["messages"] if m["role"] == "assistant"),
            None,
        ),
        what="the partial answer",
    )
    assert answer["status"] == "partial" and answer["content"]
    events = list(read_events(api_module, accepted["job_id"], timeout=30))
    streamed = "".join(e.data["text"] for e in events if e.event == "token")
    assert streamed.startswith(answer["content"]) or answer["content"].startswith(streamed)
    assert events[-1].event == "done" and events[-1].data["status"] == "cancelled"


def test_cancel_before_the_first_token_ends_the_job_cancelled(api_module: httpx.Client) -> None:
    """Cancelled while the LLM still reads a long prompt (no byte of its answer yet): the request is dropped and
    the job ends ``cancelled`` with nothing streamed and no partial answer."""
    session_id = new_session(api_module)
    words = " ".join(["river", "copper", "lantern", "meadow", "falcon", "walnut"][i % 6] for i in range(700))
    accepted = ask(api_module, session_id, f"Ticket {uuid.uuid4().hex[:8]}. Summarize these words: {words}")
    for event in read_events(api_module, accepted["job_id"], timeout=120):
        if event.event == "token":
            pytest.skip("the first token came before the request was sent")
        if event.event == "progress" and event.data["stage"] == "generate":  # the LLM request is next
            break
    assert api_module.post(f"/v1/jobs/{accepted['job_id']}/cancel").status_code == 202
    asked = time.monotonic()
    job = wait_status(api_module, accepted["job_id"], "cancelled", "succeeded", timeout=60)
    print(f"cancelled in {time.monotonic() - asked:.2f} s")
    if job["status"] == "succeeded":
        pytest.skip("the model finished its answer before the cancel arrived")
    events = list(read_events(api_module, accepted["job_id"], timeout=30))
    assert events[-1].event == "done" and events[-1].data["status"] == "cancelled"
    messages = api_module.get(f"/v1/sessions/{session_id}").json()["messages"]
    tokens = [e for e in events if e.event == "token"]
    assert tokens or [m["role"] for m in messages] == ["user"]  # no partial answer without a token


def test_bad_requests_get_clear_4xx(api_module: httpx.Client) -> None:
    session_id = new_session(api_module)
    empty = api_module.post(f"/v1/sessions/{session_id}/messages", json={"content": ""})
    assert empty.status_code == 422 and "content" in empty.json()["error"]["message"]
    assert api_module.post(f"/v1/sessions/{session_id}/messages", json={"text": "hi"}).status_code == 422
    missing = api_module.post(f"/v1/sessions/{uuid.uuid4()}/messages", json={"content": "hi"})
    assert missing.status_code == 404
    assert api_module.get("/v1/sessions/not-a-uuid").status_code == 422


def test_another_tenant_never_reads_a_session_message_or_job(api_module: httpx.Client, live: Live) -> None:
    session_id = new_session(api_module)
    accepted = ask(api_module, session_id, "Hello there.")
    with live.client(create_key("chat-outsider")) as other:
        assert other.get(f"/v1/sessions/{session_id}").status_code == 404
        assert other.post(f"/v1/sessions/{session_id}/messages", json={"content": "hi"}).status_code == 404
        assert other.get(f"/v1/jobs/{accepted['job_id']}").status_code == 404
        assert other.get(f"/v1/jobs/{accepted['job_id']}/events").status_code == 404
    wait_status(api_module, accepted["job_id"], "succeeded", "failed", timeout=120)


def test_a_second_delivery_rewrites_the_answer_instead_of_adding_one(api_module: httpx.Client, engine: Engine) -> None:
    from protostar.chat import repo

    session_id = new_session(api_module)
    accepted = ask(api_module, session_id, "Hello again.")
    job = wait_status(api_module, accepted["job_id"], "succeeded", timeout=120)
    with engine.begin() as conn:
        start = repo.context(
            conn, tenant_id=_tenant(conn, session_id), message_id=uuid.UUID(accepted["message_id"]), limit=0, model=""
        )
        assert start is not None
        again = repo.save_answer(
            conn,
            question=start.question,
            tenant_id=_tenant(conn, session_id),
            job_id=uuid.UUID(accepted["job_id"]),
            content="the redelivered answer",
            status="complete",
            sources=[],
            usage={},
        )
    messages = api_module.get(f"/v1/sessions/{session_id}").json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["id"] == str(again) == job["result"]["message_id"]  # type: ignore[index]
    assert messages[1]["content"] == "the redelivered answer"


def _tenant(conn: Connection, session_id: str) -> uuid.UUID:
    return uuid.UUID(
        str(conn.execute(text("SELECT tenant_id FROM sessions WHERE id = :id"), {"id": session_id}).scalar())
    )
