"""The OpenAI-compatible bodies: what ``POST /v1/chat/completions`` and ``GET /v1/models`` take and answer, in
the shapes of OpenAI's chat API (the ``openai`` Python client's ``types.chat``), and how a chat job's result and
events become them. The route is :mod:`protostar.api.routes.completions`.

Accepted but not used: sampling parameters (``temperature``, ``top_p``, ``stop``, ``seed``, …: the operator's
model settings apply), ``tools`` (no tool calls), ``user``. Refused (``422``): ``n`` other than 1, a conversation
whose last message is not the user's, content parts other than text. Protostar extensions: the request's
``collection_ids`` (retrieval narrowed to those collections of the caller's), and the
answer's ``job_id`` and ``sources`` (the chunks the answer was grounded on, numbered as cited).
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from protostar.api.schemas import Text

MAX_MESSAGES = 200
MAX_CONTENT = 16_000
FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
OWNED_BY = "protostar"


class TextPart(BaseModel):
    type: Literal["text"]
    text: Annotated[Text, Field(max_length=MAX_CONTENT)]


class MessageIn(BaseModel):
    """One message of the conversation; ``system`` and ``developer`` ones are accepted and left out of the prompt
    (the platform's instructions lead it), ``tool`` ones too."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[Text, Field(max_length=MAX_CONTENT)] | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionIn(BaseModel):
    """OpenAI's chat completion request; fields it has that Protostar does not use are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
    model: Annotated[str, Field(max_length=200, description="an id from GET /v1/models")]
    messages: Annotated[list[MessageIn], Field(min_length=1, max_length=MAX_MESSAGES)]
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int | None, Field(ge=1, description="at most PROTOSTAR_LLM_MAX_TOKENS")] = None
    max_completion_tokens: Annotated[int | None, Field(ge=1, description="as max_tokens")] = None
    n: Annotated[int | None, Field(ge=1, le=1, description="one choice only")] = None
    collection_ids: Annotated[
        list[uuid.UUID] | None,
        Field(max_length=100, description="Protostar: retrieve only from these collections (yours: 404 otherwise)"),
    ] = None

    def turns(self) -> list[dict[str, str]]:
        """The messages as a chat job's payload carries them (roles the prompt uses, text content)."""
        return [{"role": m.role, "content": m.text()} for m in self.messages if m.role in ("user", "assistant")]

    def answer_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: str | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class SourceRef(BaseModel):
    n: int = Field(description="the number the answer cites it by, as [n]")
    document_id: uuid.UUID
    chunk_id: int
    score: float


class ChatCompletionOut(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
    job_id: uuid.UUID = Field(description="Protostar: the chat job that answered (GET /v1/jobs/{job_id})")
    sources: list[SourceRef] = Field(default_factory=list, description="Protostar: what the answer drew on")


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = OWNED_BY


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


def completion_id(job_id: uuid.UUID) -> str:
    return f"chatcmpl-{job_id.hex}"


def finish_reason(value: object) -> str:
    return value if isinstance(value, str) and value in FINISH_REASONS else "stop"


def usage(result: dict[str, Any]) -> Usage:
    used = result.get("usage") or {}
    prompt, completion = int(used.get("prompt_tokens") or 0), int(used.get("completion_tokens") or 0)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def completion(*, job_id: uuid.UUID, created: int, model: str, result: dict[str, Any]) -> ChatCompletionOut:
    return ChatCompletionOut(
        id=completion_id(job_id),
        created=created,
        model=model,
        choices=[
            Choice(
                message=AssistantMessage(content=str(result.get("answer", ""))),
                finish_reason=finish_reason(result.get("finish_reason")),
            )
        ],
        usage=usage(result),
        job_id=job_id,
        sources=[SourceRef.model_validate(s) for s in result.get("sources", [])],
    )


def chunk(
    *,
    job_id: uuid.UUID,
    created: int,
    model: str,
    delta: dict[str, str] | None = None,
    finish: str | None = None,
    used: Usage | None = None,
) -> bytes:
    """One ``data:`` line of the stream: a delta (``choices`` of one), or the usage alone (``choices`` empty)."""
    body: dict[str, Any] = {
        "id": completion_id(job_id),
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [] if used else [{"index": 0, "delta": delta or {}, "finish_reason": finish, "logprobs": None}],
    }
    if used is not None:
        body["usage"] = used.model_dump()
    return data(body)


def data(body: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n".encode()


DONE = b"data: [DONE]\n\n"


def error(code: str, message: str) -> bytes:
    """An error inside a stream, as OpenAI sends one: the client raises ``openai.APIError`` with ``message``."""
    return data({"error": {"code": code, "message": message, "type": code, "param": None}})
