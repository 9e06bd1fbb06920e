"""The two kinds of stream the benchmark opens, from one asyncio client (httpx, HTTP/1.1 keep-alive):

* ``path``: ``POST /v1/sessions/{id}/messages`` on a fresh session (no history), then ``GET`` its
  ``events_url`` and read the Server-Sent Events until ``done``;
* ``direct``: ``POST /v1/chat/completions`` with ``stream: true`` to the same llama-server, with the messages
  the pipeline builds for the same question (``protostar.chat.prompt.build``, no hits, no history) and the
  same ``max_tokens``, read until ``[DONE]``;
* ``chatllm`` (one stream at a time only): the worker's own LLM client, ``ChatLLM.generate`` (the sync OpenAI
  client), called from a thread of this process with those messages: the LLM hop without the rest of the path.

The first two parse every event the same way (split on blank lines, JSON-decode the data), and note
``time.time()`` when the bytes of each token arrived. A path stream that breaks resumes at once with
``Last-Event-ID``, as an EventSource would (without its 3 s retry delay); ``Stream.resumed`` counts that.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from protostar.llm.stream import ChatLLM

MAX_RESUMES = 20
QUESTION = "Tell me a long story about a dragon who learns to cook, with many details. Ticket {n}."


def question() -> str:
    """A question of fixed length in tokens, unique, so no request finds another's whole prompt cached."""
    return QUESTION.format(n=random.randint(100_000, 999_999))


@dataclass
class Stream:
    kind: str  # "path" or "direct"
    sent: float  # time.time() just before the request was sent
    accepted: float | None = None  # path: the POST answered
    job_id: str | None = None
    tokens: list[float] = field(default_factory=list)  # time.time() each token arrived
    prompt_tokens: int | None = None  # direct: as the server counted them
    ended: float | None = None
    error: str | None = None
    resumed: int = 0  # path: times the SSE response broke and was resumed with Last-Event-ID
    last_event_id: str = ""

    @property
    def ttft(self) -> float | None:
        return self.tokens[0] - self.sent if self.tokens else None


@dataclass
class Target:
    """Where the streams go: the API (base URL, tenant key) and the LLM (base URL, key, model, messages)."""

    api_url: str
    api_key: str
    llm_url: str
    llm_key: str
    model: str
    max_tokens: int  # PROTOSTAR_LLM_MAX_TOKENS, as the worker sends it
    budget: int  # PROTOSTAR_CHAT_PROMPT_TOKENS

    def messages(self, text: str) -> list[dict[str, str]]:
        from protostar.chat.prompt import build

        # A tenant without documents: retrieval finds nothing, and a fresh session has no history.
        return build(question=text, hits=[], history=[], budget=self.budget).messages


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    data: str
    at: float  # time.time() when its bytes arrived


async def _events(response: httpx.Response) -> AsyncIterator[Event]:
    """Each Server-Sent Event of ``response`` (comments and keep-alives skipped)."""
    buffer = b""
    async for chunk in response.aiter_raw():
        at = time.time()
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            event_id, kind, data = "", "message", []
            for line in block.decode().splitlines():
                if line.startswith("id:"):
                    event_id = line[3:].strip()
                elif line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
            if data:
                yield Event(event_id, kind, "\n".join(data), at)


async def path(client: httpx.AsyncClient, target: Target, session_id: str, text: str) -> Stream:
    headers = {"Authorization": f"Bearer {target.api_key}"}
    stream = Stream("path", time.time())
    try:
        answer = await client.post(
            f"{target.api_url}/v1/sessions/{session_id}/messages", json={"content": text}, headers=headers
        )
        stream.accepted = time.time()
        answer.raise_for_status()
        body = answer.json()
        stream.job_id = str(body["job_id"])
        last = ""
        while not await _follow(
            client, body["events_url"], headers | ({"Last-Event-ID": last} if last else {}), stream
        ):
            stream.resumed += 1
            last = stream.last_event_id
            if stream.resumed > MAX_RESUMES:
                stream.error = f"the event stream broke {stream.resumed} times"
                break
    except httpx.HTTPError as exc:
        stream.error = f"{type(exc).__name__}: {exc}"
    stream.ended = time.time()
    return stream


async def _follow(client: httpx.AsyncClient, url: str, headers: dict[str, str], stream: Stream) -> bool:
    """Read the job's events into ``stream`` until ``done`` (True) or until the response breaks (False)."""
    try:
        async with client.stream("GET", url, headers=headers) as response:
            response.raise_for_status()
            async for event in _events(response):
                stream.last_event_id = event.id
                decoded = json.loads(event.data)
                if event.type == "token" and decoded.get("text"):
                    stream.tokens.append(event.at)
                elif event.type == "error":
                    stream.error = str(decoded.get("message"))
                elif event.type == "done":
                    return True
    except (httpx.RemoteProtocolError, httpx.ReadError):
        return False
    return False


async def direct(client: httpx.AsyncClient, target: Target, text: str) -> Stream:
    body = {
        "model": target.model,
        "messages": target.messages(text),
        "max_tokens": target.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {target.llm_key}"}
    stream = Stream("direct", time.time())
    try:
        async with client.stream("POST", f"{target.llm_url}/chat/completions", json=body, headers=headers) as response:
            response.raise_for_status()
            async for event in _events(response):
                if event.data == "[DONE]":
                    break
                chunk: dict[str, Any] = json.loads(event.data)
                if chunk.get("usage"):
                    stream.prompt_tokens = chunk["usage"].get("prompt_tokens")
                for choice in chunk.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        stream.tokens.append(event.at)
    except httpx.HTTPError as exc:
        stream.error = f"{type(exc).__name__}: {exc}"
    stream.ended = time.time()
    return stream


def product_client(llm: ChatLLM, target: Target, text: str) -> Stream:
    """One answer through ``ChatLLM.generate`` (blocking: run it in a thread)."""
    from protostar.errors import ProtostarError
    from protostar.llm.stream import Generation

    stream = Stream("chatllm", time.time())
    try:
        generation = llm.generate(
            target.messages(text),
            Generation(),
            max_tokens=target.max_tokens,
            on_text=lambda _: stream.tokens.append(time.time()),
        )
        stream.prompt_tokens = generation.prompt_tokens
    except ProtostarError as exc:
        stream.error = f"{type(exc).__name__}: {exc.message}"
    stream.ended = time.time()
    return stream


def client() -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=200)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(180.0, connect=10.0))


async def sessions(client: httpx.AsyncClient, target: Target, count: int) -> list[str]:
    """``count`` new chat sessions of the tenant (made before the clock starts)."""
    headers = {"Authorization": f"Bearer {target.api_key}"}

    async def one() -> str:
        answer = await client.post(f"{target.api_url}/v1/sessions", json={}, headers=headers)
        answer.raise_for_status()
        return str(answer.json()["session_id"])

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def burst(client: httpx.AsyncClient, target: Target, kind: str, session_ids: list[str]) -> list[Stream]:
    """One stream per session id (path) or as many direct ones, started together; returns when all ended."""
    if kind == "path":
        return list(await asyncio.gather(*(path(client, target, sid, question()) for sid in session_ids)))
    return list(await asyncio.gather(*(direct(client, target, question()) for _ in session_ids)))
