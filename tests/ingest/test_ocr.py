"""OCR of scanned pages and images: the rule that decides which pages need it, the layout of what it reads, and
parse() on scans made in the test (a text PDF rendered to images, written back without a text layer)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pypdfium2 as pdfium  # type: ignore[import-untyped]
import pytest

from protostar.errors import InputRejected
from protostar.ingest.ocr import OcrLimits, OcrReport, PageTimeout, _alarm, page_text, usable_text_layer
from protostar.ingest.parse import parse, warm
from tests.ingest.scans import FACTS, png, scanned_pdf, text_pdf, tiff


@pytest.mark.parametrize(
    ("text", "usable"),
    [
        ("", False),
        ("   \n\t ", False),
        ("12", False),  # a page number alone
        ("Chapter 3:   The   Harbours", True),  # 20 characters other than whitespace
        ("Annual report 2021   - 7", False),  # a running header: 18
        ("The lighthouse was built in 1873 by Odile Brankov.", True),
    ],
)
def test_a_text_layer_is_usable_with_enough_characters_other_than_whitespace(text: str, usable: bool) -> None:
    assert usable_text_layer(text, 20) is usable


def test_the_minimum_is_a_setting() -> None:
    assert usable_text_layer("abc", 3)
    assert not usable_text_layer("ab c", 4)


def box(x: float, y: float, text: str, height: float = 20) -> list[object]:
    return [[[x, y], [x + 100, y], [x + 100, y + height], [x, y + height]], text, 0.99]


def test_boxes_become_lines_left_to_right_and_paragraphs_at_large_gaps() -> None:
    boxes = [
        box(300, 102, "world"),  # the same line as "hello", a little lower, found first
        box(50, 100, "hello"),
        box(50, 125, "second line"),
        box(50, 220, "new paragraph"),  # a gap of several line heights
    ]
    assert page_text(boxes) == ["hello world\nsecond line", "new paragraph"]
    assert page_text([box(0, 0, "  ")]) == []
    assert page_text([]) == []


def test_consecutive_pages_skipped_for_one_reason_are_one_note() -> None:
    report = OcrReport()
    report.skip(2, "timeout")
    report.skip(3, "over the cap")
    report.skip(4, "over the cap")
    report.skip(6, "over the cap")
    assert report.as_result()["skipped"] == [
        {"page": 2, "last_page": 2, "reason": "timeout"},
        {"page": 3, "last_page": 4, "reason": "over the cap"},
        {"page": 6, "last_page": 6, "reason": "over the cap"},
    ]


def test_the_page_budget_is_cpu_time_and_gives_back_a_timer_set_before_it() -> None:
    def outer_handler(signum: int, frame: FrameType | None) -> None:
        raise AssertionError("the outer timer fired")

    def spin(seconds: float) -> None:
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass

    previous = signal.signal(signal.SIGPROF, outer_handler)
    signal.setitimer(signal.ITIMER_PROF, 100)
    try:
        with pytest.raises(PageTimeout), _alarm(0.05):
            spin(5)
        with _alarm(5):
            time.sleep(0.1)  # waiting is not CPU time
        remaining, _ = signal.getitimer(signal.ITIMER_PROF)
        assert 0 < remaining <= 100
        assert signal.getsignal(signal.SIGPROF) is outer_handler
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    warm()
    folder = tmp_path_factory.mktemp("scans")
    (folder / "scan.pdf").write_bytes(scanned_pdf(FACTS))
    (folder / "page.png").write_bytes(png(FACTS[1]))
    # A text page, then a scanned one: only the second may be OCRed.
    mixed = pdfium.PdfDocument.new()
    for source, index in ((text_pdf(FACTS), 0), (scanned_pdf(FACTS), 1)):
        document = pdfium.PdfDocument(source)
        mixed.import_pages(document, [index])
    mixed.save(folder / "mixed.pdf")
    yield folder


def words(text: str) -> str:
    """OCR sometimes drops the space between two words; compare without spaces."""
    return "".join(text.split()).lower()


def test_a_scanned_pdf_is_read_page_by_page(scans: Path) -> None:
    parsed = parse(scans / "scan.pdf", "pdf", max_pages=100, ocr=OcrLimits())
    assert parsed.page_count == 3
    assert parsed.ocr == {"pages": 3, "skipped": []}
    by_page = {page: words(" ".join(e.text for e in parsed.elements if e.page == page)) for page in (1, 2, 3)}
    assert "odilebrankov" in by_page[1] and "1873" in by_page[1]
    assert "matthiasoberlund" in by_page[2]
    assert "castellane" in by_page[3]


def test_the_ocr_page_cap_skips_later_pages_with_a_note(scans: Path) -> None:
    parsed = parse(scans / "scan.pdf", "pdf", max_pages=100, ocr=OcrLimits(max_pages=1))
    assert parsed.ocr is not None and parsed.ocr["pages"] == 1
    assert [(s["page"], s["last_page"]) for s in parsed.ocr["skipped"]] == [(2, 3)]
    assert "cap" in parsed.ocr["skipped"][0]["reason"]
    assert {e.page for e in parsed.elements} == {1}


def test_a_page_range_reads_only_its_pages(scans: Path) -> None:
    parsed = parse(scans / "scan.pdf", "pdf", max_pages=100, ocr=OcrLimits(), first_page=2, last_page=3)
    assert {e.page for e in parsed.elements} == {2, 3}
    text = text_pdf(FACTS)
    (scans / "text.pdf").write_bytes(text)
    parsed = parse(scans / "text.pdf", "pdf", max_pages=100, first_page=3)
    assert {e.page for e in parsed.elements} == {3} and parsed.ocr is None


def test_a_page_with_a_usable_text_layer_is_never_ocred(scans: Path) -> None:
    parsed = parse(scans / "mixed.pdf", "pdf", max_pages=100, ocr=OcrLimits())
    assert parsed.ocr == {"pages": 1, "skipped": []}  # page 2 only
    first = [e for e in parsed.elements if e.page == 1]
    assert first and "Odile Brankov" in " ".join(e.text for e in first)  # the text layer, spaces and all
    assert "matthiasoberlund" in words(" ".join(e.text for e in parsed.elements if e.page == 2))


def test_a_png_is_read(scans: Path) -> None:
    parsed = parse(scans / "page.png", "png", max_pages=100, ocr=OcrLimits())
    assert parsed.page_count == 1 and parsed.ocr == {"pages": 1, "skipped": []}
    assert "fortytwokindsofpear" in words(" ".join(e.text for e in parsed.elements)).replace("-", "")


def test_a_multipage_tiff_is_read_frame_by_frame_up_to_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "scan.tif"
    path.write_bytes(tiff(FACTS))
    parsed = parse(path, "tiff", max_pages=100, ocr=OcrLimits(max_pages=1))
    assert parsed.page_count == 3 and {e.page for e in parsed.elements} == {1}
    assert parsed.ocr is not None and parsed.ocr["pages"] == 1
    assert [(s["page"], s["last_page"]) for s in parsed.ocr["skipped"]] == [(2, 3)]
    assert "brankov" in words(" ".join(e.text for e in parsed.elements))
    with pytest.raises(InputRejected, match="3 pages; the limit is 2"):
        parse(path, "tiff", max_pages=2)


def test_a_damaged_image_fails_with_a_reason(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(png(FACTS[0])[:200])
    with pytest.raises(InputRejected, match="PNG image"):
        parse(broken, "png", max_pages=100, ocr=OcrLimits())


def test_a_page_over_its_time_budget_is_skipped_and_the_document_fails_only_when_nothing_was_read(
    scans: Path,
) -> None:
    with pytest.raises(InputRejected, match="budget"):
        parse(scans / "scan.pdf", "pdf", max_pages=100, ocr=OcrLimits(page_seconds=0.001))
    parsed = parse(scans / "mixed.pdf", "pdf", max_pages=100, ocr=OcrLimits(page_seconds=0.001))
    assert parsed.ocr is not None and parsed.ocr["pages"] == 0
    assert parsed.ocr["skipped"][0]["page"] == 2 and "budget" in parsed.ocr["skipped"][0]["reason"]
    assert {e.page for e in parsed.elements} == {1}
