"""What a session summary keeps word for word: the facts the user stated. Pure: no I/O.

A small model's summary loses names and numbers: in ``bench.quality`` the embedded SmolLM2-135M kept none of
the ten facts a user told in a 30-turn conversation, however the prompt asked. So a session summary has two
parts: the *facts* — the user's own statements that carry a name, a number or a decision, copied rather than
paraphrased — and below them the model's summary of the conversation. Each version carries the previous
version's facts forward and adds the new ones; when they outgrow their budget, the oldest give way. The model
only ever sees (and rewrites) the second part, so no rewriting can lose a fact.
"""

from __future__ import annotations

import re

from protostar.llm.tokens import estimate

HEADER = "Facts the user stated:"
BULLET = "- "
MAX_WORDS = 40  # a longer sentence is pasted text, not a statement about the user's world
PER_MESSAGE = 6  # statements kept from one message at most

_SENTENCE = re.compile(r"(?<=[.!?])(?<!\bDr\.)(?<!\bMr\.)(?<!\bMs\.)(?<!\bMrs\.)(?<!\bSt\.)(?<!\bProf\.)\s+|\n+")
_NUMBER_WORDS = (
    r"one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|fifty|hundred|"
    r"thousand|million|billion|half|dozen|first|second|third"
)
_NUMBER = re.compile(rf"\d|\b({_NUMBER_WORDS})\b", re.IGNORECASE)
_DECISION = re.compile(r"\b(decided|agreed|chose|will|going to|plan to|want to|need to|must)\b", re.IGNORECASE)
_NAME = re.compile(r"(?<=\s)[A-Z][\w'-]+")  # a capitalised word that does not start the sentence
_NOT_NAMES = frozenset({"I", "I'm", "I've", "I'd", "I'll", "OK"})


def stated(message: str) -> list[str]:
    """The sentences of a user's message that state a fact: not questions, short, with a number, a name or a
    decision in them."""
    out: list[str] = []
    for piece in _SENTENCE.split(message):
        sentence = " ".join(piece.split())
        if not sentence or sentence.endswith("?") or len(sentence.split()) > MAX_WORDS:
            continue
        names = [n for n in _NAME.findall(sentence) if n not in _NOT_NAMES]
        if names or _NUMBER.search(sentence) or _DECISION.search(sentence):
            out.append(sentence)
        if len(out) == PER_MESSAGE:
            break
    return out


def split(content: str) -> tuple[list[str], str]:
    """A summary's facts and the model's part (a summary written before facts existed: no facts, all text)."""
    if not content.startswith(HEADER):
        return [], content
    head, _, rest = content.partition("\n\n")
    facts = [line[len(BULLET) :] for line in head.splitlines()[1:] if line.startswith(BULLET)]
    return facts, rest


def merge(earlier: list[str], new: list[str], *, budget: int) -> list[str]:
    """``earlier`` then ``new``, each fact once, within ``budget`` tokens: the oldest give way first."""
    seen: set[str] = set()
    merged: list[str] = []
    for fact in [*earlier, *new]:
        key = fact.casefold().rstrip(".!")
        if key not in seen:
            seen.add(key)
            merged.append(fact)
    while merged and sum(estimate(f) + 2 for f in merged) > budget:
        merged.pop(0)
    return merged


def compose(facts: list[str], summary: str) -> str:
    """The stored summary: the facts block (when any), a blank line, then the model's summary."""
    if not facts:
        return summary
    block = "\n".join([HEADER, *(BULLET + f for f in facts)])
    return f"{block}\n\n{summary}" if summary else block
