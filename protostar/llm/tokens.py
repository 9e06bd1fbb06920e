"""Token counts of LLM prompts, estimated without the model's tokenizer, and text cut to a budget.

:func:`estimate` approximates a byte-level BPE tokenizer of a chat model (GPT-2, Llama and SmolLM2 style): a
common short word is one token (with its leading space), a longer word one more per three or four characters,
digits about one per three, punctuation one each, and a letter of another script (CJK, Hangul, …) about one
per UTF-8 byte. Checked against SmolLM2's own tokenizer (llama-server ``/tokenize``) on the test corpus: a
median of 1.0 times its count on English, within 10 % on Korean. It budgets prompts; the LLM's own count
(``usage.prompt_tokens``) is what the job records as spent. Chunks are measured differently, in the embedding
model's tokens (``embeddings.tokens.approx_tokens``).
"""

from __future__ import annotations

import math
import re

_PIECE = re.compile(r"(?P<word>[A-Za-z\u00c0-\u024f]+)|(?P<digits>\d+)|(?P<space>\s+)|(?P<other>.)", re.S)
ELLIPSIS = " …"


def estimate(text: str) -> int:
    """About how many tokens a chat model's BPE tokenizer makes of ``text``."""
    total = 0.0
    for match in _PIECE.finditer(text):
        kind, size = match.lastgroup, match.end() - match.start()
        if kind == "word":
            total += 1.0 + max(0, size - 5) / 3.5
        elif kind == "digits":
            total += math.ceil(size / 3)
        elif kind == "space":
            total += 0.0 if size == 1 else 1.0
        elif match.group().isalnum():  # another script: byte-level BPE spends about a token per UTF-8 byte
            total += len(match.group().encode())
        else:
            total += 1.0
    return math.ceil(total)


def split(text: str, budget: int) -> list[str]:
    """``text`` cut between words into pieces of at most about ``budget`` tokens each."""
    if estimate(text) <= budget:
        return [text]
    pieces: list[str] = []
    words: list[str] = []
    used = 0
    for word in text.split():
        cost = estimate(word)
        if words and used + cost > budget:
            pieces.append(" ".join(words))
            words, used = [], 0
        words.append(word)
        used += cost
    if words:
        pieces.append(" ".join(words))
    return pieces


def clip(text: str, budget: int, *, mark: str = "") -> str:
    """``text`` cut between words to at most about ``budget`` tokens, ``mark`` appended when it was cut."""
    if estimate(text) <= budget:
        return text
    room = max(budget - estimate(mark), 1)
    return split(text, room)[0] + mark
