"""Every real document parses to text offline, and every broken one fails with a reason, never a crash."""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pypdf
import pytest

from protostar.errors import InputRejected
from protostar.ingest.parse import Parsed, decode_text, parse, repair_mojibake, warm
from tests.corpus_files import CORPUS, KINDS

logger = logging.getLogger(__name__)

# The corpus parsed one file at a time: the 872-page handbook has its own test, password.pdf must fail.
PARSED = {name: kind for name, kind in KINDS.items() if name not in ("handbook-872p.docx", "password.pdf")}


@pytest.fixture(scope="module", autouse=True)
def warmed() -> Iterator[None]:
    started = time.perf_counter()
    warm()
    logger.info("warm() took %.2f s", time.perf_counter() - started)
    yield


@functools.cache
def parse_corpus(name: str) -> Parsed:
    """Parsed once per test run: several tests look at the same document."""
    return parse(CORPUS / name, PARSED[name], max_pages=5000)


def text_of(parsed: Parsed) -> str:
    return "\n".join(element.text for element in parsed.elements)


@pytest.mark.parametrize("name", sorted(PARSED))
def test_corpus_document_parses_to_text(name: str) -> None:
    parsed = parse_corpus(name)
    assert parsed.elements
    assert all(element.text and element.text == element.text.strip() for element in parsed.elements)
    assert all(element.type for element in parsed.elements)
    assert len(text_of(parsed)) > 10


@pytest.mark.slow
def test_long_word_document_parses() -> None:
    started = time.perf_counter()
    parsed = parse(CORPUS / "handbook-872p.docx", "docx", max_pages=5000)
    logger.info("handbook-872p.docx: %d elements in %.1f s", len(parsed.elements), time.perf_counter() - started)
    assert len(parsed.elements) > 4000
    assert len(text_of(parsed)) > 500_000


def test_answers_to_the_qa_questions_are_in_the_parsed_text() -> None:
    lines = (CORPUS / "qa.jsonl").read_text().splitlines()
    texts: dict[str, str] = {}
    for line in lines:
        item = json.loads(line)
        name = item["document"]
        if name not in texts:
            texts[name] = " ".join(text_of(parse_corpus(name)).split())
        assert any(" ".join(evidence.split()) in texts[name] for evidence in item["evidence"]), item


@pytest.mark.parametrize("name", [name for name, kind in PARSED.items() if kind == "pdf"])
def test_pdf_elements_have_page_numbers(name: str) -> None:
    parsed = parse_corpus(name)
    assert parsed.page_count is not None
    assert all(element.page is not None and 1 <= element.page <= parsed.page_count for element in parsed.elements)


def test_two_page_pdf_reaches_page_two() -> None:
    parsed = parse_corpus("layout-parser-paper-fast.pdf")
    assert parsed.page_count == 2
    assert {element.page for element in parsed.elements} == {1, 2}


def test_encrypted_pdf_is_rejected_with_the_reason() -> None:
    with pytest.raises(InputRejected, match="encrypted"):
        parse(CORPUS / "password.pdf", "pdf", max_pages=5000)


def test_pdf_unstructured_skips_falls_back_to_pdfium_text() -> None:
    # unstructured's `fast` strategy judges a page of this PDF "too complex" and returns nothing.
    parsed = parse_corpus("failure-after-repair.pdf")
    assert parsed.page_count == 76
    assert len(parsed.elements) > 60
    assert {element.type for element in parsed.elements} == {"NarrativeText"}
    assert parsed.elements[0].page == 1
    assert "Breast Cancer" in parsed.elements[0].text


def test_non_utf8_markdown_keeps_its_umlauts() -> None:
    text = text_of(parse_corpus("umlauts-non-utf8.md"))
    assert "können" in text
    assert "äöüß" in text


def test_double_encoded_characters_are_repaired() -> None:
    text = text_of(parse_corpus("norwich-city.txt"))
    assert "1986\u20131990 Watford" in text
    assert not any("\x80" <= char <= "\x9f" for char in text)


def test_repair_mojibake_leaves_real_text_alone() -> None:
    assert repair_mojibake("café \u2013 naïve Â© 2024") == "café \u2013 naïve Â© 2024"
    assert repair_mojibake("1986\u00e2\u0080\u00931990") == "1986\u20131990"


def test_decode_text() -> None:
    assert decode_text("grüß".encode()) == "grüß"
    assert decode_text(b"\xef\xbb\xbfbom") == "bom"
    assert decode_text("grüß €".encode("cp1252")) == "grüß €"
    assert decode_text(b"\x81\x8d") == "\x81\x8d"


@pytest.mark.parametrize(("name", "kind"), [("reliance.pdf", "pdf"), ("layout-parser-paper-fast.pdf", "pdf")])
def test_truncated_pdf_is_rejected(tmp_path: Path, name: str, kind: str) -> None:
    data = (CORPUS / name).read_bytes()
    half = tmp_path / name
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputRejected, match="PDF"):
        parse(half, kind, max_pages=5000)


@pytest.mark.parametrize(
    ("name", "kind"),
    [("docx-tables.docx", "docx"), ("sample-presentation.pptx", "pptx"), ("vodafone.xlsx", "xlsx")],
)
def test_truncated_office_file_is_rejected(tmp_path: Path, name: str, kind: str) -> None:
    data = (CORPUS / name).read_bytes()
    half = tmp_path / name
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputRejected, match="could not be parsed"):
        parse(half, kind, max_pages=5000)


def test_garbage_is_rejected_whatever_the_claimed_kind(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00\x01 not a document " * 50)
    for kind in ("pdf", "docx", "pptx", "xlsx", "epub", "odt", "msg"):
        with pytest.raises(InputRejected):
            parse(garbage, kind, max_pages=5000)


def test_pdf_over_the_page_limit_is_rejected(tmp_path: Path) -> None:
    source = pypdf.PdfReader(CORPUS / "layout-parser-paper-fast.pdf")
    writer = pypdf.PdfWriter()
    for _ in range(3):
        for page in source.pages:
            writer.add_page(page)
    long_pdf = tmp_path / "six-pages.pdf"
    with long_pdf.open("wb") as file:
        writer.write(file)
    with pytest.raises(InputRejected, match="has 6 pages; the limit is 2"):
        parse(long_pdf, "pdf", max_pages=2)
    parsed = parse(long_pdf, "pdf", max_pages=6)
    assert parsed.page_count == 6
    assert max(element.page or 0 for element in parsed.elements) == 6


def test_document_without_text_is_rejected(tmp_path: Path) -> None:
    blank = tmp_path / "blank.md"
    blank.write_text("\n   \n\t\n")
    with pytest.raises(InputRejected, match="no text"):
        parse(blank, "md", max_pages=5000)


def test_pdf_without_text_is_rejected(tmp_path: Path) -> None:
    writer = pypdf.PdfWriter()
    writer.add_blank_page(width=200, height=200)
    blank = tmp_path / "blank.pdf"
    with blank.open("wb") as file:
        writer.write(file)
    with pytest.raises(InputRejected, match="scanned or malformed"):
        parse(blank, "pdf", max_pages=5000)


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(InputRejected, match="not supported"):
        parse(CORPUS / "README.md", "doc", max_pages=5000)


def test_missing_file_is_not_blamed_on_the_input(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        parse(tmp_path / "gone.pdf", "pdf", max_pages=5000)


def test_tab_separated_and_legacy_encoded_csv(tmp_path: Path) -> None:
    tsv = tmp_path / "cups.tsv"
    tsv.write_bytes(b"name\tcity\tcups\nBlues\tSTL\t1\nFlyers\tPHI\t2\n")
    assert text_of(parse(tsv, "csv", max_pages=5000)) == "name city cups Blues STL 1 Flyers PHI 2"
    latin = tmp_path / "cities.csv"
    latin.write_bytes("name;city\nKöln;Düsseldorf\n".encode("latin-1"))
    assert "Köln" in text_of(parse(latin, "csv", max_pages=5000))


NO_NETWORK = """
import socket, sys
attempts = []
def refuse(self, address, *args, **kwargs):
    attempts.append(repr(address))
    raise OSError("network disabled by the test")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = lambda address, *a, **k: refuse(None, address)
socket.getaddrinfo = lambda host, *a, **k: refuse(None, host)
from pathlib import Path
from protostar.ingest.parse import parse, warm
warm()
corpus = Path(sys.argv[1])
for name, kind in [("reliance.pdf", "pdf"), ("docx-tables.docx", "docx"), ("README.md", "md"),
                   ("example-10k.html", "html"), ("family-day.eml", "eml"), ("fake.odt", "odt")]:
    assert parse(corpus / name, kind, max_pages=5000).elements, name
print("attempts:", attempts)
"""


@pytest.mark.slow
def test_warm_and_parse_never_touch_the_network() -> None:
    env = {key: value for key, value in os.environ.items() if key not in ("DO_NOT_TRACK", "HF_HUB_OFFLINE")}
    result = subprocess.run(
        [sys.executable, "-c", NO_NETWORK, str(CORPUS)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "attempts: []" in result.stdout, result.stdout
