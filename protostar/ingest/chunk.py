"""Cut parsed elements into overlapping, titled chunks that fit a token budget. Pure and deterministic.

Rules:

* Every ``Title`` that follows text opens a section; titles with no text between them belong to one
  section. A section's first chunk starts with all its titles, in order, and is never closed while it
  holds only titles: the text after them is cut to fit instead. Its later chunks open with a heading
  line: the section's last titles that fit in a quarter of the budget (the last one clipped with "…" if
  it alone is longer). So a title never ends a chunk without text, except in a document that ends in
  titles, or whose run of titles is longer than a whole chunk.
* Other elements are packed whole, in order, while the chunk stays within ``max_tokens``. An element
  that does not fit a chunk of its own is cut on sentence boundaries, then between words, then (text
  without spaces) between characters, each piece filling what the chunk has left.
* Consecutive chunks of one section overlap: a chunk opens with the last whole sentences (else words) of
  the previous chunk's last element, at most ``overlap`` tokens; the overlap is dropped when it would
  force an element that fits a chunk to be cut.
* A ``Table`` gets chunks of its own (after the section's titles or under its heading), with no overlap.
* Chunks run on across page changes; ``page`` is the page of the first element whose text is new in the
  chunk (not the heading line or the overlap).
* ``element_types`` lists the distinct element types of the chunk's text in order of appearance
  (``Title`` first when the chunk opens with a heading line).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from protostar.embeddings.tokens import approx_tokens

if TYPE_CHECKING:
    from protostar.ingest.parse import Element


TokenCounter = Callable[[str], int]


@dataclass(frozen=True)
class Chunk:
    ordinal: int
    text: str
    page: int | None
    element_types: list[str]
    token_count: int


@dataclass(frozen=True)
class _Atom:
    """A whole element, or a piece of one too long for a chunk."""

    text: str
    type: str
    page: int | None
    source: int  # index of the element it comes from: pieces of one element join with a space


def chunk(
    elements: Sequence[Element],
    *,
    max_tokens: int,
    overlap: int,
    count_tokens: TokenCounter = approx_tokens,
) -> list[Chunk]:
    """Chunks of ``elements`` of at most ``max_tokens`` tokens each (as ``count_tokens`` counts them)."""
    chunker = Chunker(max_tokens=max_tokens, overlap=overlap, count_tokens=count_tokens)
    chunker.feed(elements)
    return chunker.finish()


class Chunker:
    """:func:`chunk` for elements that arrive a batch at a time, in order. A chunk once closed is final (later
    elements never change it), so :attr:`closed` chunks can be embedded while later pages are still parsed; the
    chunks are those of one :func:`chunk` call over all the elements."""

    def __init__(self, *, max_tokens: int, overlap: int, count_tokens: TokenCounter = approx_tokens) -> None:
        if max_tokens < 8:
            raise ValueError("max_tokens must be at least 8")
        if not 0 <= overlap < max_tokens:
            raise ValueError("overlap must be at least 0 and below max_tokens")
        self._packer = _Packer(max_tokens=max_tokens, overlap=overlap, count=count_tokens)
        self._next = 0  # the index of the next element: pieces of one element join by it

    @property
    def closed(self) -> list[Chunk]:
        return self._packer.chunks

    def feed(self, elements: Sequence[Element]) -> None:
        for element in elements:
            self._packer.add(self._next, element)
            self._next += 1

    def finish(self) -> list[Chunk]:
        """All the chunks, the last one closed."""
        return self._packer.finish()


class _Packer:
    """Fills one chunk at a time. ``body`` holds the chunk being filled: first the ``carried`` overlap
    atoms from the previous chunk, then new ones. A section's titles are its first atoms; its later chunks
    open with ``heading`` instead."""

    def __init__(self, *, max_tokens: int, overlap: int, count: TokenCounter) -> None:
        self.max_tokens = max_tokens
        self.overlap = overlap
        self.count = count
        self.chunks: list[Chunk] = []
        self.titles: list[_Atom] = []
        self.heading = ""
        self.section_has_text = False
        self.section_chunks = 0
        self.body: list[_Atom] = []
        self.carried = 0

    def add(self, index: int, element: Element) -> None:
        text = element.text.strip()
        if not text:
            return
        atom = _Atom(text=text, type=element.type, page=element.page, source=index)
        if element.type == "Title":
            if self.section_has_text:
                self._flush(overlap=False)
                self.titles, self.section_has_text, self.section_chunks = [], False, 0
            self.titles.append(atom)
            self.heading = self._heading()
            self._add_body(atom)
        elif element.type == "Table":
            self.section_has_text = True
            if self._has_text():
                self._flush(overlap=False)
            self._cut(atom, overlap=False)
            self._flush(overlap=False)
        else:
            self.section_has_text = True
            self._add_body(atom)

    def finish(self) -> list[Chunk]:
        self._flush(overlap=False)
        return self.chunks

    # --- packing -----------------------------------------------------------------------------------

    def _add_body(self, atom: _Atom) -> None:
        if self._fits([*self.body, atom]):
            self.body.append(atom)
            return
        if self._has_text():  # never flush a chunk that holds only titles: cut the text to follow them
            self._flush(overlap=True)
            if self._fits([*self.body, atom]):
                self.body.append(atom)
                return
            if self.carried and self._fits([atom]):  # keep the element whole rather than the overlap
                self._drop_overlap()
                self.body.append(atom)
                return
        self._cut(atom, overlap=True)

    def _cut(self, atom: _Atom, *, overlap: bool) -> None:
        """Add ``atom`` in pieces, each filling what the chunk has left, closing chunks in between.

        Pieces are sought in a window of the text (``_CHARS_PER_TOKEN`` per token of budget, cut at a
        space), so that a huge element costs linear, not quadratic, time."""
        text, position, carry = atom.text, 0, ""
        while carry or position < len(text):
            end = _window_end(text, position, self.max_tokens * _CHARS_PER_TOKEN - len(carry))
            window, position = f"{carry} {text[position:end]}".strip(), end
            if not window:
                continue
            fits = functools.partial(self._fits_after_body, atom)
            head, carry = _take(window, fits, cut_words=False)
            if not head:
                if self._has_text():
                    self._flush(overlap=overlap)
                    continue
                if self.carried:
                    self._drop_overlap()  # it leaves no room for a word
                    continue
                # Only titles (or nothing) before a word too long for what is left: cut the word.
                head, carry = _take(window, fits, cut_words=True)
                if not head and self.body:
                    self._flush(overlap=False)  # titles that leave room for no character of the text
                    continue
                if not head:
                    head, carry = window[0], window[1:]  # only a counter that rates one character over budget
            self.body.append(_piece(atom, head))
            if carry or position < len(text):
                self._flush(overlap=overlap)

    def _fits_after_body(self, atom: _Atom, text: str) -> bool:
        return self._fits([*self.body, _piece(atom, text)])

    def _drop_overlap(self) -> None:
        self.body, self.carried = self.body[self.carried :], 0

    def _has_text(self) -> bool:
        return any(atom.type != "Title" for atom in self.body[self.carried :])

    def _fits(self, body: list[_Atom]) -> bool:
        return self.count(self._text(body)) <= self.max_tokens

    def _text(self, body: list[_Atom]) -> str:
        if self.heading and self.section_chunks:
            return self.heading + "\n" + _join(body)
        return _join(body)

    def _heading(self) -> str:
        """The section's latest titles that fit a quarter of the budget, the last one clipped if need be."""
        cap = self.max_tokens // 4
        lines: list[str] = []
        for title in reversed(self.titles):
            if self.count("\n".join([title.text, *lines])) > cap:
                break
            lines.insert(0, title.text)
        if lines:
            return "\n".join(lines)
        last = self.titles[-1].text[: self.max_tokens * _CHARS_PER_TOKEN]
        head, _ = _take(last, lambda text: self.count(text + " …") <= cap, cut_words=True)
        return head + " …" if head else ""

    def _flush(self, *, overlap: bool) -> None:
        """Close the chunk being filled, if it holds anything new; open the next with an overlap or empty."""
        new = self.body[self.carried :]
        if new:
            self._emit(new)
        self.body = self._overlap(new) if overlap and new else []
        self.carried = len(self.body)

    def _overlap(self, new: list[_Atom]) -> list[_Atom]:
        """The chunk's last whole sentences, across its last elements but not into its titles, worth at
        most ``overlap`` tokens; else the last words of its last element."""
        if self.overlap == 0:
            return []
        picked: list[_Atom] = []
        for atom in reversed(new):
            if atom.type == "Title":
                break
            sentences = _sentences(atom.text)
            taken = 0
            while taken < len(sentences):
                tail = _piece(atom, " ".join(sentences[len(sentences) - taken - 1 :]))
                if self.count(_join([tail, *picked])) > self.overlap:
                    break
                taken += 1
            if taken:
                picked.insert(0, _piece(atom, " ".join(sentences[len(sentences) - taken :])))
            if taken < len(sentences):
                break
        if picked or new[-1].type == "Title":
            return picked
        words = new[-1].text.split()
        taken = _greedy(words[::-1], lambda text: self.count(text) <= self.overlap)
        return [_piece(new[-1], " ".join(words[len(words) - taken :]))] if taken else []

    def _emit(self, new: list[_Atom]) -> None:
        text = self._text(self.body)
        heading = ["Title"] if self.heading and self.section_chunks else []
        types = list(dict.fromkeys([*heading, *(atom.type for atom in self.body)]))
        self.chunks.append(
            Chunk(
                ordinal=len(self.chunks),
                text=text,
                page=new[0].page,
                element_types=types,
                token_count=self.count(text),
            )
        )
        self.section_chunks += 1


def _piece(atom: _Atom, text: str) -> _Atom:
    return _Atom(text=text, type=atom.type, page=atom.page, source=atom.source)


def _join(atoms: Sequence[_Atom]) -> str:
    """Atoms on their own lines, except that pieces of one element rejoin with a space."""
    parts: list[str] = []
    for index, atom in enumerate(atoms):
        if index:
            parts.append(" " if atom.source == atoms[index - 1].source else "\n")
        parts.append(atom.text)
    return "".join(parts)


# --- splitting ------------------------------------------------------------------------------------------

# After . ! ? … and whitespace, or straight after the ideographic full stop and full-width ! and ?.
# approx_tokens rates a token at 7 characters or fewer, so a window this wide always holds more than a
# chunk; a counter that rates tokens longer only gets smaller pieces, never too large ones.
_CHARS_PER_TOKEN = 16

_SENTENCE_END = re.compile(r"(?<=[.!?\u2026])\s+|(?<=[\u3002\uff01\uff1f])\s*|\n\s*\n")


def _sentences(text: str) -> list[str]:
    return [sentence.strip() for sentence in _SENTENCE_END.split(text) if sentence.strip()]


def _take(text: str, fits: Callable[[str], bool], *, cut_words: bool) -> tuple[str, str]:
    """The longest head of ``text`` that fits, cut after a sentence, else a word, else (``cut_words``) a
    character; and the rest. The head is empty when nothing fits."""
    sentences = _sentences(text)
    if not sentences:
        return "", ""
    taken = _greedy(sentences, fits)
    if taken:
        return " ".join(sentences[:taken]), " ".join(sentences[taken:])
    words = sentences[0].split()
    after = " ".join(sentences[1:])
    taken = _greedy(words, fits)
    if taken:
        return " ".join(words[:taken]), " ".join([*words[taken:], after]).strip()
    if not cut_words:
        return "", text
    cut = _longest_prefix(words[0], fits)
    return words[0][:cut], " ".join([words[0][cut:], *words[1:], after]).strip()


def _greedy(parts: list[str], fits: Callable[[str], bool]) -> int:
    """How many leading ``parts``, joined by spaces, fit together (galloping, then bisecting)."""
    if not parts or not fits(parts[0]):
        return 0
    low, high = 1, 2  # parts[:low] fits; find the first count that does not
    while high <= len(parts) and fits(" ".join(parts[:high])):
        low, high = high, high * 2
    high = min(high, len(parts) + 1)
    while high - low > 1:  # parts[:low] fits, parts[:high] does not (or runs past the end)
        middle = (low + high) // 2
        if fits(" ".join(parts[:middle])):
            low = middle
        else:
            high = middle
    return low


def _longest_prefix(word: str, fits: Callable[[str], bool]) -> int:
    low, high = 0, len(word)
    while low < high:
        middle = (low + high + 1) // 2
        if fits(word[:middle]):
            low = middle
        else:
            high = middle - 1
    return low


def _window_end(text: str, start: int, size: int) -> int:
    """Where a window of about ``size`` characters from ``start`` ends: at a space when there is one."""
    if size <= 0:
        return start
    if start + size >= len(text):
        return len(text)
    space = text.rfind(" ", start + 1, start + size)
    return space if space > start else start + size
