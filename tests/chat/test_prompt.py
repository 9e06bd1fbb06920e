"""The chat prompt within its budget: what stays and what gives way."""

from __future__ import annotations

import uuid

from protostar.chat.prompt import SYSTEM, Turn, build
from protostar.search import Hit


def hit(n: int, words: int = 50) -> Hit:
    return Hit(uuid.uuid4(), n, " ".join(f"fact{n}" for _ in range(words)), 1.0 / n, n, f"doc{n}.pdf")


def test_sources_are_numbered_and_the_question_comes_last() -> None:
    prompt = build(question="What is fact1?", hits=[hit(1), hit(2)], history=[], budget=2000)
    system, question = prompt.messages[0], prompt.messages[-1]
    assert system["role"] == "system" and system["content"].startswith(SYSTEM)
    assert "[1] (doc1.pdf, page 1)\nfact1" in system["content"] and "[2] (doc2.pdf, page 2)" in system["content"]
    assert question == {"role": "user", "content": "What is fact1?"}
    assert [h.chunk_id for h in prompt.sources] == [1, 2]


def test_history_keeps_the_latest_turns_in_order() -> None:
    history = [Turn("user", f"question {i}") if i % 2 == 0 else Turn("assistant", f"answer {i}") for i in range(10)]
    prompt = build(question="next?", hits=[], history=history, budget=2000)
    assert [m["content"] for m in prompt.messages[1:-1]] == [t.content for t in history]
    tight = build(question="next?", hits=[], history=history, budget=95)
    kept = [m["content"] for m in tight.messages[1:-1]]
    assert 0 < len(kept) < len(history) and kept == [t.content for t in history[-len(kept) :]]


def test_a_tight_budget_drops_low_ranked_sources_and_clips_long_ones() -> None:
    prompt = build(question="q", hits=[hit(1, 400), hit(2), hit(3)], history=[], budget=300)
    assert [h.chunk_id for h in prompt.sources] == [1]
    assert prompt.messages[0]["content"].endswith("…") and prompt.tokens <= 300


def test_the_summary_rides_in_the_system_message() -> None:
    prompt = build(question="q", hits=[], history=[], summary="They talked about ports.", budget=500)
    assert "Summary of the conversation so far:\nThey talked about ports." in prompt.messages[0]["content"]
