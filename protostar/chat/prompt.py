"""The chat prompt: instructions, retrieved sources (numbered), the session's summary, the latest turns, and
the question, within a token budget. Pure: no I/O, so it is tested on its own.

What gives way when the budget is tight, in order: older turns, then the lowest-ranked sources, then the
tail of the longest remaining source. The question and the instructions always stay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from protostar.llm.stream import ChatMessage
from protostar.llm.tokens import ELLIPSIS, clip, estimate
from protostar.search import Hit

SYSTEM = (
    "You are a helpful assistant. Answer the user's question using the numbered sources when they are "
    "relevant, and cite them by number, like [1]. If the sources do not contain the answer, say so briefly."
)
MIN_SOURCE_TOKENS = 40


@dataclass(frozen=True)
class Turn:
    role: str  # "user" or "assistant"
    content: str


@dataclass(frozen=True)
class Prompt:
    messages: list[ChatMessage]
    sources: list[Hit]  # in the order of their numbers: sources[0] is [1]
    history_used: int
    tokens: int  # the estimate the budget was applied to
    texts: list[str] = field(default_factory=list)  # each source's text as the prompt has it (maybe clipped)


def build(
    *,
    question: str,
    hits: Sequence[Hit],
    history: Sequence[Turn],
    summary: str | None = None,
    budget: int,
) -> Prompt:
    fixed = estimate(SYSTEM) + estimate(question) + 16
    if summary:
        fixed += estimate(summary) + 8
    left = max(budget - fixed, 0)

    sources: list[tuple[Hit, str]] = []
    for hit in hits:
        if left < MIN_SOURCE_TOKENS:
            break
        text = clip(hit.text, left - 8, mark=ELLIPSIS)
        sources.append((hit, text))
        left -= estimate(text) + 8

    turns: list[Turn] = []
    for turn in reversed(history):
        cost = estimate(turn.content) + 4
        if cost > left:
            break
        turns.insert(0, turn)
        left -= cost

    system = SYSTEM
    if summary:
        system += "\n\nSummary of the conversation so far:\n" + summary
    if sources:
        listed = "\n\n".join(f"[{n}] ({_where(hit)})\n{text}" for n, (hit, text) in enumerate(sources, start=1))
        system += "\n\nSources:\n" + listed
    messages: list[ChatMessage] = [{"role": "system", "content": system}]
    messages += [{"role": t.role, "content": t.content} for t in turns]
    messages.append({"role": "user", "content": question})
    return Prompt(
        messages=messages,
        sources=[h for h, _ in sources],
        history_used=len(turns),
        tokens=budget - left,
        texts=[t for _, t in sources],
    )


def _where(hit: Hit) -> str:
    return f"{hit.filename}, page {hit.page}" if hit.page else hit.filename
