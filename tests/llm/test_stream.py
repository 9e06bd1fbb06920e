"""The LLM client's error paths with the HTTP transport faked (and one real socket, for cancel)."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx2
import pytest

from protostar.errors import Cancelled, LLMFailed, LLMUnavailable, Transient
from protostar.llm.stream import ChatLLM, Generation

MESSAGES = [{"role": "user", "content": "hello"}]


def sse(*pieces: str, usage: bool = True, raw: list[bytes] | None = None) -> bytes:
    lines = []
    for piece in pieces:
        chunk = {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
        }
        lines.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    lines += raw or []
    end = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    }
    lines.append(b"data: " + json.dumps(end).encode() + b"\n\n")
    if usage:
        tail = {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": [],
            "usage": {"prompt_tokens": 7, "completion_tokens": len(pieces), "total_tokens": 7 + len(pieces)},
        }
        lines.append(b"data: " + json.dumps(tail).encode() + b"\n\n")
    lines.append(b"data: [DONE]\n\n")
    return b"".join(lines)


def stream_response(body: bytes) -> httpx2.Response:
    return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)


def llm(handler: Callable[[httpx2.Request], httpx2.Response], **kwargs: object) -> ChatLLM:
    options: dict[str, object] = {"max_retries": 2, "max_backoff": 0.01, "total_timeout": 10.0}
    options.update(kwargs)
    return ChatLLM(
        base_url="http://llm.test/v1",
        api_key="k",
        model="m",
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
        **options,  # type: ignore[arg-type]
    )


def run(client: ChatLLM) -> tuple[Generation, list[str]]:
    pieces: list[str] = []
    generation = Generation()
    client.generate(MESSAGES, generation, max_tokens=16, on_text=pieces.append)
    return generation, pieces


def test_a_stream_arrives_piece_by_piece_with_usage() -> None:
    generation, pieces = run(llm(lambda request: stream_response(sse("Hel", "lo", "!"))))
    assert pieces == ["Hel", "lo", "!"] and generation.text == "Hello!"
    assert generation.usage == {"prompt_tokens": 7, "completion_tokens": 3}
    assert generation.finish_reason == "stop"


def test_without_usage_the_pieces_are_counted() -> None:
    generation, _ = run(llm(lambda request: stream_response(sse("a", "b", usage=False))))
    assert generation.usage == {"prompt_tokens": 0, "completion_tokens": 2}


@pytest.mark.parametrize("status", [429, 500, 503])
def test_429_and_5xx_are_retried_then_succeed(status: int) -> None:
    calls = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        calls.append(request)
        if len(calls) < 3:
            return httpx2.Response(status, json={"error": {"message": "busy"}})
        return stream_response(sse("ok"))

    _, pieces = run(llm(handler))
    assert len(calls) == 3 and pieces == ["ok"]


def test_after_the_cap_the_call_fails_with_the_reason() -> None:
    calls = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        calls.append(request)
        return httpx2.Response(429, json={"error": {"message": "slow down"}})

    with pytest.raises(LLMUnavailable, match="after 2 retries: HTTP 429") as caught:
        run(llm(handler))
    assert len(calls) == 3
    assert isinstance(caught.value, Transient)  # the job is retried as a whole, with backoff


def test_a_refusal_is_not_retried() -> None:
    calls = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        calls.append(request)
        return httpx2.Response(400, json={"error": {"message": "the prompt is too long"}})

    with pytest.raises(LLMFailed, match="HTTP 400: the prompt is too long"):
        run(llm(handler))
    assert len(calls) == 1


def test_timeouts_are_retried_then_reported() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ReadTimeout("no first token", request=request)

    with pytest.raises(LLMUnavailable, match="timed out"):
        run(llm(handler))


def test_a_malformed_stream_is_an_error_with_a_reason() -> None:
    body = sse("fine", raw=[b"data: {this is not json\n\n"])
    generation = Generation()
    with pytest.raises(LLMFailed, match="malformed"):
        llm(lambda request: stream_response(body)).generate(MESSAGES, generation, max_tokens=8, on_text=print)
    assert generation.text == "fine"  # what arrived before is kept for the partial answer


def test_a_provider_that_is_down_fails_with_a_reason() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = ChatLLM(base_url=f"http://127.0.0.1:{port}/v1", api_key=None, model="m", max_retries=1, max_backoff=0.01)
    with pytest.raises(LLMUnavailable, match="connection to the LLM failed"):
        run(client)


def test_a_stream_cut_after_its_first_tokens_is_transient_and_keeps_its_text() -> None:
    """The LLM server killed mid-answer: no retry inside the call (it would repeat the text already sent); the
    job is retried as a whole (LLMUnavailable is transient), and what arrived is kept for the partial answer."""
    calls = []

    def cut() -> Iterator[bytes]:
        yield sse("half an", usage=False).split(b"\n\n")[0] + b"\n\n"  # the first piece, no end
        raise httpx2.RemoteProtocolError("peer closed connection without sending complete message body")

    def handler(request: httpx2.Request) -> httpx2.Response:
        calls.append(request)
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=cut())

    generation = Generation()
    with pytest.raises(LLMUnavailable, match="stream broke after 1 tokens"):
        llm(handler).generate(MESSAGES, generation, max_tokens=8, on_text=print)
    assert len(calls) == 1
    assert generation.text == "half an"


class _SlowStream(http.server.BaseHTTPRequestHandler):
    """Streams one piece every 0.2 s, for 60 s: long enough that only a cancel or a deadline ends it."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        try:
            for _ in range(300):
                self.wfile.write(sse("tick ", usage=False).split(b"\n\n")[0] + b"\n\n")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass  # the client went away: what a cancel looks like from the server

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def slow_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowStream)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_close_stops_a_stream_within_a_second_and_keeps_the_partial_text(slow_server: str) -> None:
    client = ChatLLM(base_url=slow_server, api_key="k", model="m")
    generation = Generation()
    threading.Timer(1.0, generation.close).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        client.generate(MESSAGES, generation, max_tokens=8, on_text=lambda piece: None)
    assert time.monotonic() - started < 2.0
    assert generation.text.startswith("tick ")


def test_the_total_deadline_ends_a_stream_that_goes_on(slow_server: str) -> None:
    client = ChatLLM(base_url=slow_server, api_key="k", model="m", total_timeout=1.0)
    generation = Generation()
    with pytest.raises(LLMFailed, match="did not finish within 1 s"):
        client.generate(MESSAGES, generation, max_tokens=8, on_text=lambda piece: None)
    assert generation.text


class _Reading(http.server.BaseHTTPRequestHandler):
    """Takes the request, then (``headers``: after its answer's headers, as llama-server does) sends nothing for
    30 s, as llama-server queueing it and reading a long prompt; notes when its client went away."""

    gone = threading.Event()
    headers_first = True

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        if _Reading.headers_first:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            self.wfile.flush()
        self.connection.settimeout(30)
        try:
            if self.connection.recv(1) == b"":  # the client shut its side: EOF
                _Reading.gone.set()
        except OSError:
            _Reading.gone.set()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("headers_first", [True, False], ids=["after-headers", "before-headers"])
def test_close_before_the_first_token_ends_the_request_and_drops_the_connection(headers_first: bool) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Reading)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Reading.gone.clear()
    _Reading.headers_first = headers_first
    try:
        client = ChatLLM(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="k", model="m")
        generation = Generation()
        threading.Timer(0.5, generation.close).start()
        started = time.monotonic()
        with pytest.raises(Cancelled):
            client.generate(MESSAGES, generation, max_tokens=8, on_text=lambda piece: None)
        assert time.monotonic() - started < 10.0  # the server would hold the request for 30 s
        assert _Reading.gone.wait(10.0)  # and it saw its client go: llama-server then drops the request
        assert generation._socket is None
    finally:
        server.shutdown()
