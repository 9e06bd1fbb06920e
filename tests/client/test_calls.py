"""The client's own logic, over httpx.MockTransport (the injectable transport, no server): which calls are
retried, how errors carry the API's code, message and status, the SSE decoder, resume and redelivery."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from protostar.client import (
    AuthError,
    Client,
    InvalidRequest,
    JobFailed,
    NotFound,
    NotSupported,
    Reset,
    Retry,
    ServerError,
)
from protostar.client.models import Event
from protostar.client.sse import ChatState, Decoder

NO_WAIT = Retry(attempts=3, backoff=0.0)


def error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}})


def client_of(handler: httpx.MockTransport) -> Client:
    return Client("http://api.test", "ps_key", retry=NO_WAIT, transport=handler)


def test_an_idempotent_call_is_retried_on_503_and_sends_the_key() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) < 3:
            return error(503, "database_unavailable", "the database is unavailable; try again")
        return httpx.Response(200, json={"hits": []})

    with client_of(httpx.MockTransport(handle)) as client:
        assert client.search("anything") == []
    assert len(seen) == 3
    assert all(r.headers["authorization"] == "Bearer ps_key" for r in seen)


def test_posting_a_message_is_not_sent_twice_and_the_error_carries_code_message_status() -> None:
    calls = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return error(503, "broker_unavailable", "the broker is unavailable")

    with client_of(httpx.MockTransport(handle)) as client, pytest.raises(ServerError) as caught:
        client.sessions.send("s1", "hello")
    assert calls == 1
    assert (caught.value.status, caught.value.code, caught.value.message) == (
        503,
        "broker_unavailable",
        "the broker is unavailable",
    )


def test_a_request_that_never_reached_the_server_is_retried_whatever_it_is() -> None:
    calls = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(201, json={"session_id": "s1"})

    with client_of(httpx.MockTransport(handle)) as client:
        assert client.sessions.create() == "s1"
    assert calls == 2


@pytest.mark.parametrize(
    ("response", "kind"),
    [
        (error(401, "unauthorized", "missing or invalid API key"), AuthError),
        (error(404, "not_found", "job x not found"), NotFound),
        (error(422, "validation_failed", "content: too short"), InvalidRequest),
        (httpx.Response(500, text="oops"), ServerError),
    ],
)
def test_errors_map_to_one_small_tree(response: httpx.Response, kind: type[Exception]) -> None:
    with client_of(httpx.MockTransport(lambda r: response)) as client, pytest.raises(kind):
        client.jobs.get("x")


def test_routes_an_older_server_lacks_raise_not_supported_and_a_missing_job_stays_not_found() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/gone/retry"):
            return error(404, "not_found", "job gone not found")
        if request.method == "POST":
            return error(405, "method_not_allowed", "Method Not Allowed")
        return error(404, "not_found", "Not Found")

    with client_of(httpx.MockTransport(handle)) as client:
        with pytest.raises(NotSupported, match="GET /v1/jobs"):
            client.jobs.list()
        with pytest.raises(NotSupported, match="retry"):
            client.jobs.retry("x")
        with pytest.raises(NotFound) as caught:
            client.jobs.retry("gone")
        assert not isinstance(caught.value, NotSupported)
        with pytest.raises(NotSupported, match="GET /v1/sessions"):
            client.sessions.list()
        with pytest.raises(NotSupported, match="messages"):
            client.sessions.messages("x")
        with pytest.raises(NotSupported, match="DELETE /v1/sessions"):
            client.sessions.delete("x")
        with pytest.raises(NotSupported, match="reingest"):
            client.documents.reingest("x")


def sse(*events: tuple[str, str, dict[str, object]]) -> bytes:
    return b"".join(f"id: {i}\nevent: {t}\ndata: {json.dumps(d)}\n\n".encode() for i, t, d in events)


def test_the_decoder_skips_keepalives_and_never_yields_half_an_event() -> None:
    decoder = Decoder()
    lines = [": keep-alive", "", "id: 1-0", "event: token", 'data: {"text": "a"}', "", "id: 2-0", "event: token"]
    events = [e for e in (decoder.feed(line) for line in lines) if e is not None]
    assert events == [Event("1-0", "token", {"text": "a"})]


def test_a_new_attempt_resets_the_answer_and_a_failure_raises() -> None:
    state = ChatState("j")
    feed = [
        Event("1", "status", {"status": "running", "attempt": 1}),
        Event("2", "token", {"text": "Hel"}),
        Event("3", "status", {"status": "running", "attempt": 2}),
        Event("4", "token", {"text": "Hello"}),
        Event("5", "error", {"code": "llm_failed", "message": "the LLM stopped"}),
        Event("6", "done", {"status": "failed"}),
    ]
    assert [state.feed(e) for e in feed] == [None, "Hel", Reset(2), "Hello", None, None]
    assert state.text == "Hello" and state.finished
    with pytest.raises(JobFailed) as caught:
        state.check()
    assert (caught.value.status, caught.value.code) == ("failed", "llm_failed")


def test_events_resume_after_a_broken_connection_with_last_event_id() -> None:
    first = sse(("1-0", "status", {"status": "running", "attempt": 1}), ("2-0", "token", {"text": "a"}))
    rest = sse(("3-0", "token", {"text": "b"}), ("4-0", "done", {"status": "succeeded"}))
    asked: list[str | None] = []

    def broken() -> Iterator[bytes]:
        yield first + b"id: 3-0\nevent: tok"  # half an event, then the connection drops
        raise httpx.ReadError("connection reset")

    def handle(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers.get("last-event-id"))
        body = rest if asked[-1] else broken()
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    with client_of(httpx.MockTransport(handle)) as client:
        events = list(client.jobs.events("j"))
    assert [e.id for e in events] == ["1-0", "2-0", "3-0", "4-0"]
    assert asked == [None, "2-0"]
