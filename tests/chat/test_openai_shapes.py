"""The OpenAI-compatible bodies checked against the ``openai`` package's own types (pure: no stack), and the
conversation a completion's job carries turned into a question and its history."""

from __future__ import annotations

import json
import uuid

import pytest
from openai.types import Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from protostar.api import completions as oai
from protostar.chat.pipeline import from_payload
from protostar.chat.prompt import Turn
from protostar.errors import InputRejected

JOB = uuid.uuid4()
RESULT = {
    "answer": "It is sailed in June [1].",
    "sources": [{"document_id": str(uuid.uuid4()), "chunk_id": 3, "score": 0.5, "n": 1}],
    "usage": {"prompt_tokens": 200, "completion_tokens": 9, "prompt_tokens_estimate": 190},
    "history_used": 0,
    "finish_reason": "stop",
}


def parse(line: bytes) -> dict[str, object]:
    text = line.decode()
    assert text.startswith("data: ") and text.endswith("\n\n")
    return json.loads(text.removeprefix("data: "))  # type: ignore[no-any-return]


def test_a_completion_is_openais_chat_completion() -> None:
    body = oai.completion(job_id=JOB, created=1_700_000_000, model="m", result=RESULT).model_dump(mode="json")
    parsed = ChatCompletion.model_validate(body)
    assert parsed.id == f"chatcmpl-{JOB.hex}" and parsed.object == "chat.completion"
    assert parsed.choices[0].message.content == RESULT["answer"] and parsed.choices[0].finish_reason == "stop"
    assert parsed.usage is not None and (parsed.usage.prompt_tokens, parsed.usage.completion_tokens) == (200, 9)
    assert parsed.usage.total_tokens == 209
    assert body["job_id"] == str(JOB) and body["sources"][0]["n"] == 1


def test_chunks_are_openais_chunks() -> None:
    role = ChatCompletionChunk.model_validate(
        parse(oai.chunk(job_id=JOB, created=1, model="m", delta={"role": "assistant", "content": ""}))
    )
    assert role.choices[0].delta.role == "assistant" and role.choices[0].finish_reason is None
    piece = ChatCompletionChunk.model_validate(
        parse(oai.chunk(job_id=JOB, created=1, model="m", delta={"content": "It"}))
    )
    assert piece.choices[0].delta.content == "It" and piece.object == "chat.completion.chunk"
    end = ChatCompletionChunk.model_validate(parse(oai.chunk(job_id=JOB, created=1, model="m", finish="length")))
    assert end.choices[0].finish_reason == "length" and end.choices[0].delta.content is None
    used = ChatCompletionChunk.model_validate(
        parse(oai.chunk(job_id=JOB, created=1, model="m", used=oai.usage(RESULT)))
    )
    assert used.choices == [] and used.usage is not None and used.usage.total_tokens == 209
    assert oai.DONE == b"data: [DONE]\n\n"
    assert parse(oai.error("llm_failed", "the model refused"))["error"] == {
        "code": "llm_failed",
        "message": "the model refused",
        "type": "llm_failed",
        "param": None,
    }


def test_finish_reasons_outside_openais_are_stop_and_models_are_openais() -> None:
    assert [oai.finish_reason(r) for r in ("stop", "length", None, "eos", 3)] == [
        "stop",
        "length",
        "stop",
        "stop",
        "stop",
    ]
    assert Model.model_validate(oai.ModelOut(id="m").model_dump()).owned_by == "protostar"


def test_the_request_keeps_user_and_assistant_text_and_ignores_what_it_does_not_use() -> None:
    body = oai.ChatCompletionIn.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Where"}, {"type": "text", "text": "?"}]},
                {"role": "assistant", "content": "Oskarn."},
                {"role": "user", "content": "When?", "name": "ann"},
            ],
            "temperature": 0.3,
            "max_completion_tokens": 40,
            "tools": [],
        }
    )
    assert body.turns() == [
        {"role": "user", "content": "Where?"},
        {"role": "assistant", "content": "Oskarn."},
        {"role": "user", "content": "When?"},
    ]
    assert body.answer_tokens() == 40
    for bad in ({"messages": []}, {"n": 2}, {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}):
        with pytest.raises(ValueError):
            oai.ChatCompletionIn.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}], **bad})


def test_a_payloads_conversation_is_the_question_and_its_history() -> None:
    messages = [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three"},
        {"role": "assistant", "content": "four"},
        {"role": "user", "content": "five?"},
    ]
    asked = from_payload({"messages": messages, "max_tokens": 999}, history_limit=2, max_tokens=256)
    assert asked.question == "five?" and asked.summary is None
    assert asked.history == [Turn("user", "three"), Turn("assistant", "four")]
    assert asked.max_tokens == 256  # capped at the operator's
    assert from_payload({"messages": messages, "max_tokens": 8}, history_limit=0, max_tokens=256).max_tokens == 8
    assert from_payload({"messages": messages}, history_limit=0, max_tokens=256).history == []
    with pytest.raises(InputRejected):
        from_payload({"messages": messages[:2]}, history_limit=6, max_tokens=256)
