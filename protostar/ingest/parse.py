"""Turn a stored document into text elements with ``unstructured``, offline. Worker processes only.

:func:`warm` imports the partitioners and loads the spaCy model once per process (the ingest worker calls
it in each prefork child). :func:`parse` never lets a parser exception escape: whatever is wrong with the
input becomes :class:`InputRejected` with a reason a user can act on.

PDFs are opened with PDFium first, to refuse encrypted files and files over the page limit before any
parsing, and to count pages. When ``unstructured``'s ``fast`` strategy returns nothing for a PDF (it
deliberately skips PDFs whose pages it judges "too complex", and swallows its own extraction errors), the
text PDFium extracts is used instead, one ``NarrativeText`` element per page.

Pages without a usable text layer (:func:`~protostar.ingest.ocr.usable_text_layer`: fewer than
``OcrLimits.min_chars`` non-space characters in PDFium's text) are rendered and read by OCR
(:mod:`protostar.ingest.ocr`), and so are image files (PNG, JPEG, TIFF, each frame a page): up to
``OcrLimits.max_pages`` pages per call, each within its time budget. A page that fails OCR, runs out of time or
is over the cap is skipped and noted in :attr:`Parsed.ocr` (the job's result shows it); the document fails only
when nothing at all could be read. A page with a usable text layer is never OCRed. When every page is a scan,
``unstructured`` is not run at all.

``first_page`` / ``last_page`` (1-based, inclusive) parse a range of a PDF's pages (or an image's frames): the
range is copied into a PDF of its own for ``unstructured``, and page numbers stay those of the whole document.

E-mail attachments are not parsed: ``unstructured`` would route them through its auto-partitioner, which
reaches for the Hugging Face Hub for images and fails the whole message on one broken attachment.
"""

from __future__ import annotations

import functools
import io
import itertools
import logging
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium  # type: ignore[import-untyped]
import pypdfium2.raw as pdfium_c  # type: ignore[import-untyped]

from protostar.errors import InputRejected
from protostar.ingest.ocr import (
    OcrLimits,
    OcrReport,
    PageTimeout,
    count_frames,
    image_frames,
    read_page,
    render_pdf_page,
    usable_text_layer,
)
from protostar.settings import get_settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Element:
    text: str
    type: str
    page: int | None


@dataclass
class Parsed:
    elements: list[Element]
    page_count: int | None
    ocr: dict[str, Any] | None = None
    """When OCR was needed: ``{"pages": read, "skipped": [{"page", "last_page", "reason"}]}``; else None."""


_LABELS = {
    "pdf": "PDF",
    "docx": "Word document",
    "pptx": "PowerPoint presentation",
    "xlsx": "Excel workbook",
    "csv": "CSV file",
    "html": "HTML page",
    "md": "Markdown file",
    "txt": "text file",
    "eml": "e-mail",
    "msg": "Outlook message",
    "rtf": "RTF document",
    "odt": "OpenDocument text",
    "epub": "EPUB book",
    "png": "PNG image",
    "jpeg": "JPEG image",
    "tiff": "TIFF image",
}

IMAGE_KINDS = frozenset({"png", "jpeg", "tiff"})

_Partitioner = Callable[..., list[Any]]


@functools.cache
def warm() -> None:
    """Import the parsers and load the spaCy model; idempotent, and never touches the network."""
    # One of the three writes to the environment (the others: embed.LocalEmbedder, export.model_file):
    # `unstructured` reads these on import and on every partition, to skip its telemetry ping and usage notice.
    # HF_HUB_OFFLINE keeps any model lookup from reaching for the Hugging Face Hub.
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger("pdfminer").setLevel(logging.ERROR)  # it warns about every odd operator in a PDF
    partitioners = _partitioners()

    from unstructured.nlp.tokenize import pos_tag, sent_tokenize

    sent_tokenize("Warm the model. Then parse.")
    pos_tag("warm the model")
    # The first PDF partition imports more of the stack and compiles numba functions: pay that here.
    partitioners["pdf"](file=io.BytesIO(text_pdf([["Warm up."]])), strategy="fast", languages=["eng"])
    logger.info("ingest parsers warmed in process %d", os.getpid())


@functools.cache
def _partitioners() -> dict[str, _Partitioner]:
    from unstructured.partition.csv import partition_csv
    from unstructured.partition.docx import partition_docx
    from unstructured.partition.email import partition_email
    from unstructured.partition.epub import partition_epub
    from unstructured.partition.html import partition_html
    from unstructured.partition.md import partition_md
    from unstructured.partition.msg import partition_msg
    from unstructured.partition.odt import partition_odt
    from unstructured.partition.pdf import partition_pdf
    from unstructured.partition.pptx import partition_pptx
    from unstructured.partition.rtf import partition_rtf
    from unstructured.partition.text import partition_text
    from unstructured.partition.xlsx import partition_xlsx

    return {
        "pdf": partition_pdf,
        "docx": partition_docx,
        "pptx": partition_pptx,
        "xlsx": partition_xlsx,
        "csv": partition_csv,
        "html": partition_html,
        "md": partition_md,
        "txt": partition_text,
        "eml": partition_email,
        "msg": partition_msg,
        "rtf": partition_rtf,
        "odt": partition_odt,
        "epub": partition_epub,
    }


def parse(
    path: Path,
    kind: str,
    *,
    max_pages: int,
    ocr: OcrLimits | None = None,
    first_page: int | None = None,
    last_page: int | None = None,
    between_pages: Callable[[], None] | None = None,
) -> Parsed:
    """Parse the document at ``path`` of a kind :func:`~protostar.documents.sniff.sniff` returned.

    ``ocr``: the OCR limits (default: from the settings). ``first_page``/``last_page``: a page range of a PDF or
    an image file (default: all pages). ``between_pages`` is called before each OCR page (the pipeline passes
    its cancel check), since OCR takes seconds per page.
    """
    if kind not in _LABELS:
        raise InputRejected(f"documents of type {kind!r} are not supported")
    if not path.is_file():
        raise FileNotFoundError(path)  # ours to fix, not the input's fault: let it escape
    limits = ocr if ocr is not None else OcrLimits.from_settings(get_settings())
    if kind in IMAGE_KINDS:
        return _parse_image(path, kind, max_pages, limits, (first_page, last_page), between_pages)
    if kind != "pdf" and (first_page is not None or last_page is not None):
        raise ValueError("page ranges are for PDFs and images")  # a caller's mistake, not the input's
    warm()
    if kind != "pdf":
        elements = _partition(path, kind)
        if not elements:
            raise InputRejected(f"no text could be extracted from the {_LABELS[kind]}")
        return Parsed(elements=elements, page_count=None)
    return _parse_pdf(path, max_pages, limits, (first_page, last_page), between_pages)


def _page_range(pages: tuple[int | None, int | None], count: int) -> range:
    """1-based page numbers of the range, clamped to the document."""
    first = max(1, pages[0] or 1)
    last = min(count, pages[1] or count)
    return range(first, last + 1)


def _parse_pdf(
    path: Path,
    max_pages: int,
    limits: OcrLimits,
    pages: tuple[int | None, int | None],
    between_pages: Callable[[], None] | None,
) -> Parsed:
    page_count = _check_pdf(path, max_pages)
    numbers = _page_range(pages, page_count)
    layers = _text_layers(path, numbers)  # page number -> PDFium's text
    scanned = [number for number in numbers if not usable_text_layer(layers[number], limits.min_chars)]
    elements: list[Element] = []
    if len(scanned) < len(numbers):
        elements = _partition_pdf_range(path, numbers, page_count)
        if not elements:
            elements = [
                Element(text=text, type="NarrativeText", page=number)
                for number, text in layers.items()
                if text and number not in scanned
            ]
            logger.info("%s: unstructured found no text, PDFium found %d pages of it", path.name, len(elements))
    report: OcrReport | None = None
    if scanned:
        by_page = _ocr_pdf_pages(path, scanned, limits, between_pages)
        report = by_page.report
        elements = _merge(elements, by_page.elements)
    if not elements:
        if report is not None and report.skipped:
            reasons = "; ".join(sorted({entry["reason"] for entry in report.skipped}))
            raise InputRejected(f"no text could be extracted from the PDF (scanned pages skipped: {reasons})")
        raise InputRejected(
            "no text could be extracted from the PDF (blank, scanned or malformed PDF, and OCR found no text)"
        )
    return Parsed(elements=elements, page_count=page_count, ocr=report.as_result() if report else None)


def _merge(text_layer: list[Element], ocred: dict[int, list[Element]]) -> list[Element]:
    """The text layer's elements with each OCRed page's in its place: OCR text replaces the little a page's
    text layer had when it found more, else the text layer stays. Order: by page, then as found."""
    layer_by_page: dict[int | None, list[Element]] = {}
    for element in text_layer:
        layer_by_page.setdefault(element.page, []).append(element)
    for page, elements in ocred.items():
        found = sum(len(element.text) for element in elements)
        had = sum(len(element.text) for element in layer_by_page.get(page, []))
        if found > had:
            layer_by_page[page] = elements
    return [element for page in sorted(layer_by_page, key=lambda p: p or 0) for element in layer_by_page[page]]


@dataclass
class _OcrPages:
    elements: dict[int, list[Element]]
    report: OcrReport


def _ocr_pdf_pages(
    path: Path, numbers: list[int], limits: OcrLimits, between_pages: Callable[[], None] | None
) -> _OcrPages:
    out = _OcrPages(elements={}, report=OcrReport())
    document = pdfium.PdfDocument(path)
    try:
        for number in numbers:
            if between_pages is not None:
                between_pages()
            if _counted(out.report) >= limits.max_pages:
                out.report.skip(number, f"over the OCR cap of {limits.max_pages} pages per document")
                continue
            _ocr_one(out, number, functools.partial(render_pdf_page, document, number - 1, dpi=limits.dpi), limits)
    finally:
        document.close()
    logger.info("%s: OCR read %d pages, skipped %s", path.name, out.report.pages, out.report.skipped)
    return out


def _counted(report: OcrReport) -> int:
    """Pages OCR was tried on (read, failed or timed out), which is what the cap counts."""
    tried = report.pages
    for entry in report.skipped:
        if not entry["reason"].startswith("over the OCR cap"):
            tried += entry["last_page"] - entry["page"] + 1
    return tried


def _ocr_one(out: _OcrPages, number: int, image: Callable[[], Any], limits: OcrLimits) -> None:
    """OCR one page; a failure or a timeout becomes a note, never an exception (apart from out of memory and
    the task's soft time limit, which must reach the task shell as they are)."""
    try:
        paragraphs = read_page(image(), seconds=limits.page_seconds)
    except PageTimeout:
        out.report.skip(number, f"OCR ran out of its {limits.page_seconds:g} s budget for the page")
        return
    except Exception as exc:  # the boundary with a renderer and an OCR engine fed untrusted input
        if _not_about_the_input(exc):
            raise
        logger.info("page %d: OCR failed: %r", number, exc)
        out.report.skip(number, f"OCR failed ({type(exc).__name__})")
        return
    out.report.pages += 1
    elements = [Element(text=text, type="NarrativeText", page=number) for text in paragraphs if text.strip()]
    if elements:
        out.elements[number] = elements


def _ocr_frames(
    path: Path, label: str, numbers: range, limits: OcrLimits, between_pages: Callable[[], None] | None
) -> _OcrPages:
    out = _OcrPages(elements={}, report=OcrReport())
    frames = itertools.islice(image_frames(path), numbers.start - 1, numbers.stop - 1)
    for number in numbers:
        if between_pages is not None:
            between_pages()  # outside the try below: a cancel must reach the task shell as it is
        if _counted(out.report) >= limits.max_pages:
            for later in range(number, numbers.stop):  # not decoded at all
                out.report.skip(later, f"over the OCR cap of {limits.max_pages} pages per document")
            break
        try:
            frame = next(frames)
        except StopIteration:
            break
        except Exception as exc:  # decoding this frame failed: keep what was read
            if _not_about_the_input(exc):
                raise
            logger.info("%s: the image could not be decoded: %r", path.name, exc)
            if not out.elements:
                raise InputRejected(f"the {label} could not be decoded ({type(exc).__name__})") from exc
            out.report.skip(number, f"the {label} could not be decoded from here on ({type(exc).__name__})")
            break
        _ocr_one(out, number, functools.partial(_given, frame), limits)
        del frame
    return out


def _given(value: Any) -> Any:
    return value


def _parse_image(
    path: Path,
    kind: str,
    max_pages: int,
    limits: OcrLimits,
    pages: tuple[int | None, int | None],
    between_pages: Callable[[], None] | None,
) -> Parsed:
    label = _LABELS[kind]
    try:
        frame_count = count_frames(path)
    except Exception as exc:  # Pillow on untrusted input: unreadable, truncated, a decompression bomb
        if _not_about_the_input(exc):
            raise
        raise InputRejected(f"the {label} could not be opened ({type(exc).__name__})") from exc
    if frame_count > max_pages:
        raise InputRejected(f"the {label} has {frame_count} pages; the limit is {max_pages}")
    numbers = _page_range(pages, frame_count)
    out = _ocr_frames(path, label, numbers, limits, between_pages)
    elements = [element for number in sorted(out.elements) for element in out.elements[number]]
    if not elements:
        if out.report.skipped:
            reasons = "; ".join(sorted({entry["reason"] for entry in out.report.skipped}))
            raise InputRejected(f"no text could be read from the {label} ({reasons})")
        raise InputRejected(f"no text could be read from the {label}")
    return Parsed(elements=elements, page_count=frame_count, ocr=out.report.as_result())


def _check_pdf(path: Path, max_pages: int) -> int:
    """The page count; refuses encrypted and unreadable PDFs and those over ``max_pages``."""
    try:
        document = pdfium.PdfDocument(path)
    except pdfium.PdfiumError as exc:
        if exc.err_code == pdfium_c.FPDF_ERR_PASSWORD:
            raise InputRejected("the PDF is encrypted with a password; remove the password and upload again") from exc
        raise InputRejected(f"the PDF could not be opened; it may be damaged or truncated ({exc})") from exc
    try:
        page_count = len(document)
    finally:
        document.close()
    if page_count > max_pages:
        raise InputRejected(f"the PDF has {page_count} pages; the limit is {max_pages}")
    return page_count


def _partition(path: Path, kind: str, **extra: Any) -> list[Element]:
    partitioner = _partitioners()[kind]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            raw = partitioner(**_arguments(path, kind), **extra)
    except Exception as exc:  # the boundary with parsers of untrusted input
        if _not_about_the_input(exc):
            raise
        logger.info("%s: the %s parser failed: %r", path.name, kind, exc)
        raise InputRejected(f"the {_LABELS[kind]} could not be parsed ({type(exc).__name__})") from exc
    for warning in caught:
        logger.info("%s: parser warning: %s", path.name, warning.message)
    return _to_elements(raw)


def _not_about_the_input(exc: Exception) -> bool:
    """Out of memory, or Celery's soft time limit (billiard's ``SoftTimeLimitExceeded`` is an Exception):
    the task shell must see these as they are, not as a verdict on the document."""
    if isinstance(exc, MemoryError):
        return True
    return any(cls.__name__ == "SoftTimeLimitExceeded" for cls in type(exc).__mro__)


def _arguments(path: Path, kind: str) -> dict[str, Any]:
    arguments: dict[str, Any] = {"languages": ["eng"]}  # skips language detection, which we do not use
    if kind in ("md", "txt"):
        arguments["text"] = decode_text(path.read_bytes())
        return arguments
    arguments["filename"] = str(path)
    if kind == "pdf":
        arguments.update(strategy="fast", include_page_breaks=False)
    elif kind in ("eml", "msg"):
        arguments["process_attachments"] = False
    elif kind == "csv":
        arguments["encoding"] = _text_encoding(path.read_bytes())
    return arguments


def decode_text(data: bytes) -> str:
    """UTF-8 (with or without a BOM), else Windows-1252, else Latin-1 (which decodes any bytes)."""
    return data.decode(_text_encoding(data))


def _text_encoding(data: bytes) -> str:
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            data.decode(encoding)
        except UnicodeDecodeError:
            continue
        return encoding
    return "latin-1"


def _to_elements(raw: list[Any]) -> list[Element]:
    elements = []
    for item in raw:
        text = repair_mojibake(str(item.text or "")).strip()
        if text:
            elements.append(Element(text=text, type=str(item.category), page=item.metadata.page_number))
    return elements


# UTF-8 bytes read as Latin-1 once too often: a lead byte then continuation bytes, at least one of them a
# C1 control character, which never belongs in real text ("â\x80\x93" is an en dash).
_MOJIBAKE = re.compile("[\u00c2-\u00f4](?=[\u0080-\u00bf]{0,2}[\u0080-\u009f])[\u0080-\u00bf]{1,3}")


def repair_mojibake(text: str) -> str:
    """Undo double-encoded UTF-8 sequences; leave anything that does not decode cleanly alone."""

    def fix(match: re.Match[str]) -> str:
        try:
            return match.group().encode("latin-1").decode("utf-8")
        except UnicodeDecodeError:
            return match.group()

    return _MOJIBAKE.sub(fix, text)


def _text_layers(path: Path, numbers: range) -> dict[int, str]:
    """PDFium's text of each page in ``numbers`` (1-based), tidied (empty for a page without a text layer)."""
    layers = {}
    document = pdfium.PdfDocument(path)
    try:
        for number in numbers:
            page = document[number - 1]
            textpage = page.get_textpage()
            try:
                layers[number] = _tidy(str(textpage.get_text_bounded()))
            finally:
                textpage.close()
                page.close()
    finally:
        document.close()
    return layers


def _partition_pdf_range(path: Path, numbers: range, page_count: int) -> list[Element]:
    """``unstructured``'s elements of the pages in ``numbers``; a range short of the whole document is copied
    into a PDF of its own first (page numbers stay the whole document's)."""
    if numbers.start == 1 and numbers.stop - 1 == page_count:
        return _partition(path, "pdf")
    part = path.with_name(f"{path.name}.pages-{numbers.start}-{numbers.stop - 1}.pdf")
    source = pdfium.PdfDocument(path)
    target = pdfium.PdfDocument.new()
    try:
        target.import_pages(source, list(range(numbers.start - 1, numbers.stop - 1)))
        target.save(part)
    finally:
        target.close()
        source.close()
    try:
        return _partition(part, "pdf", starting_page_number=numbers.start)
    finally:
        part.unlink(missing_ok=True)


def _tidy(text: str) -> str:
    lines = (line.strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    return "\n".join(line for line in lines if line)


def text_pdf(pages: list[list[str]], *, size: int = 16) -> bytes:
    """A valid PDF with one page per list of lines, in ``size`` pt Helvetica (ASCII, no parentheses or
    backslashes), built by hand: the ingest child's warm-up document (and the tests' text pages)."""
    count = len(pages)
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % (4 + 2 * i) for i in range(count)), count),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, lines in enumerate(pages):
        shown = b" ".join(b"(%s) Tj T*" % line.encode("ascii") for line in lines)
        content = b"BT /F1 %d Tf %d TL 72 720 Td %s ET" % (size, size + size // 4, shown)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            b"/Contents %d 0 R >>" % (5 + 2 * i)
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)
