"""Which source an answer that cites none draws on.

The prompt asks the model to cite its numbered sources (``[1]``), and small models mostly do not: the embedded
default cited none in ``bench.quality``. A reader still wants to know where an answer comes from, so when an
answer cites no source, the one it draws on is found from its words and cited at its end (``chat.pipeline``).

What the answer draws on is what it adds to the question: its content words that the question does not have
(names, dates, amounts), so a source that merely shares the question's words is not taken for the answer's.
Each such word a source holds counts one, a word with a digit two (a figure is the likeliest fact). The source
with the most wins (the higher-ranked on a tie), when it holds at least :data:`MIN_SUPPORT`; else none is cited:
an answer that adds nothing found in the sources (a refusal, a guess) is left as it is. Pure: tested on its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MIN_SUPPORT = 2  # a source must hold this much of what the answer adds (a figure counts two) to be cited

_TOKEN = re.compile(r"\d[\d,.]*\d|\d|[^\W\d_]+", re.UNICODE)
# Words an answer uses about the sources or the question rather than to state a fact.
_FILLER_WORDS = """
    the and for are was were has have had not but with from that this these those which what when where who whom
    whose why how than then there their they them its his her our your you yours also been being into onto over
    under about after before between during such only very more most some any each other can could would should
    will shall may might must does did doing done said says say according source sources document documents text
    context passage information answer question mentioned mention mentions provide provided provides contain
    contains state states stated based sorry unable cannot know given found however therefore yes
"""
_FILLER = frozenset(_FILLER_WORDS.split())


def words(text: str) -> set[str]:
    """The content words of ``text``: lowercased, at least three letters or holding a digit (thousands
    separators dropped), filler words left out, a plural's trailing ``s`` dropped."""
    found: set[str] = set()
    for token in _TOKEN.findall(text.lower()):
        if token[0].isdigit():
            found.add(token.replace(",", "").rstrip("."))
        elif len(token) >= 3 and token not in _FILLER:
            found.add(token[:-1] if len(token) > 4 and token.endswith("s") and not token.endswith("ss") else token)
    return found


def attribute(answer: str, question: str, sources: Sequence[str]) -> int | None:
    """The number (from 1) of the source ``answer`` draws on, or None (see the module's docstring)."""
    added = words(answer) - words(question)
    if not added or not sources:
        return None
    best, best_support = None, 0
    for n, source in enumerate(sources, start=1):
        held = added & words(source)
        support = sum(2 if w[0].isdigit() else 1 for w in held)
        if support > best_support:
            best, best_support = n, support
    return best if best_support >= MIN_SUPPORT else None
