"""Token counts in the embedding model's word pieces, estimated without its tokenizer: what a chunk's
``token_count`` holds (``ingest.chunk``) and what a search query's embedding is counted as (``jobs.usage``)."""

from __future__ import annotations

import math
import re

_HANGUL = "\u1100-\u11ff\u3130-\u318f\uac00-\ud7af"
_CJK = "\u2e80-\u2fdf\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
_PIECE = re.compile(rf"(?P<hangul>[{_HANGUL}])|(?P<cjk>[{_CJK}])|(?P<digits>\d+)|(?P<word>[^\W\d_]+)|\S")


def approx_tokens(text: str) -> int:
    """About the number of word pieces all-MiniLM-L6-v2's tokenizer makes of ``text`` (no special tokens).

    Calibrated on the test corpus (windows of 150 words): median 1.04 times the real count, 1st percentile
    0.91, 99th 1.13. Punctuation marks and CJK ideographs count one each, Hangul syllables 2.5 (the
    uncased tokenizer splits them into jamo), long words and numbers more than one.
    """
    total = 0.0
    for match in _PIECE.finditer(text):
        kind, size = match.lastgroup, match.end() - match.start()
        if kind == "hangul":
            total += 2.5
        elif kind == "digits":
            total += max(1.0, size * 0.5)
        elif kind == "word":
            total += _word_tokens(match.group(), size)
        else:
            total += 1.0
    return math.ceil(total)


def _word_tokens(word: str, size: int) -> float:
    if word.isascii():
        return 1.0 + max(0, size - 6) * 0.15
    if max(word) <= "\u024f":  # accented Latin: the tokenizer strips accents and splits the rest
        return max(1.0, size * 0.5)
    return float(size)  # Cyrillic, Greek, Arabic, ...: about a piece per letter
