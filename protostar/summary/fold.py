"""Map-reduce summarization, pure: no I/O, the LLM call is passed in, so it is tested on its own.

Pieces (the previous summary and the new messages, or a document's chunks) are packed in order into groups
that fit the prompt budget; each group becomes one summary. While more than one summary is left, they are
packed and summarized again. A single group is one LLM call; every summary is clipped to ``limit`` tokens and
the budget holds at least two of them, so every round has at most half the pieces of the one before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from protostar.llm.stream import ChatMessage
from protostar.llm.tokens import clip, estimate, split

SESSION = (
    "You write the memory of a conversation between a user and an assistant. Summarize the text below in a "
    "few plain sentences: who the user is, what they asked, the facts and answers given, and anything left "
    "open. Keep names and numbers. Write only the summary."
)
DOCUMENT = (
    "Summarize the text below in a few plain sentences. Keep the main points, names and numbers. "
    "Write only the summary."
)
SEPARATOR = "\n\n"
MAX_ROUNDS = 20  # halving each round: far more than any input needs

Summarize = Callable[[str], str]  # text of one group -> its summary
Progress = Callable[[str, int, int], None]  # stage, done, total


def messages(instructions: str, text: str) -> list[ChatMessage]:
    return [{"role": "system", "content": instructions}, {"role": "user", "content": text}]


def text_budget(instructions: str, prompt_tokens: int) -> int:
    """Tokens of text one call may carry: the prompt budget less the instructions and the chat template."""
    return max(prompt_tokens - estimate(instructions) - 16, 64)


def pack(pieces: Sequence[str], budget: int) -> list[str]:
    """Consecutive pieces joined into texts of at most ``budget`` tokens (a piece too long alone is split)."""
    groups: list[str] = []
    current: list[str] = []
    used = 0
    for piece in pieces:
        for part in split(piece, budget):
            cost = estimate(part) + 2
            if current and used + cost > budget:
                groups.append(SEPARATOR.join(current))
                current, used = [], 0
            current.append(part)
            used += cost
    if current:
        groups.append(SEPARATOR.join(current))
    return groups


def planned_calls(pieces: Sequence[str], *, budget: int, limit: int) -> int:
    """How many calls :func:`fold` makes at most for ``pieces``: the map groups, then reduce rounds as if every
    summary were ``limit`` tokens long (shorter ones only pack tighter), before any call is made."""
    groups = len(pack([p for p in pieces if p.strip()], budget))
    calls = groups
    per_call = max(budget // (limit + 2), 2)
    while groups > 1:
        groups = -(-groups // per_call)
        calls += groups
    return calls


def fold(
    pieces: Sequence[str],
    *,
    budget: int,
    limit: int,
    summarize: Summarize,
    progress: Progress | None = None,
) -> tuple[str, int]:
    """One summary of ``pieces`` in order, and how many calls it took. ``limit`` caps every summary."""
    if budget < 2 * (limit + 2):
        raise ValueError("the budget must hold at least two summaries, or reducing never ends")
    calls = 0
    current = [p for p in pieces if p.strip()]
    for round_ in range(MAX_ROUNDS):
        groups = pack(current, budget)
        # One call for the whole input is ``summarize``; otherwise ``map`` first, then ``reduce`` to the end.
        stage = ("summarize" if len(groups) == 1 else "map") if round_ == 0 else "reduce"
        outputs: list[str] = []
        for n, group in enumerate(groups):
            if progress is not None:
                progress(stage, n, len(groups))
            outputs.append(clip(summarize(group).strip(), limit))
            calls += 1
        if progress is not None:
            progress(stage, len(groups), len(groups))
        if len(outputs) <= 1:
            return (outputs[0] if outputs else ""), calls
        current = outputs
    raise AssertionError("unreachable: every round packs at least two summaries into one call")  # pragma: no cover
