"""Turn a stored document into text elements with ``unstructured``, offline. Worker processes only.

:func:`warm` imports the partitioners and loads the spaCy model once per process (the ingest worker calls
it in each prefork child). :func:`parse` never lets a parser exception escape: whatever is wrong with the
input becomes :class:`InputRejected` with a reason a user can act on.

PDFs are opened with PDFium first, to refuse encrypted files and files over the page limit before any
parsing, and to count pages. When ``unstructured``'s ``fast`` strategy returns nothing for a PDF (it
deliberately skips PDFs whose pages it judges "too complex", and swallows its own extraction errors), the
text PDFium extracts is used instead, one ``NarrativeText`` element per page.

E-mail attachments are not parsed: ``unstructured`` would route them through its auto-partitioner, which
reaches for the Hugging Face Hub for images and fails the whole message on one broken attachment.
"""

from __future__ import annotations

import functools
import io
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
}

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
    partitioners["pdf"](file=io.BytesIO(_tiny_pdf("Warm up.")), strategy="fast", languages=["eng"])
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


def parse(path: Path, kind: str, *, max_pages: int) -> Parsed:
    """Parse the document at ``path`` of a kind :func:`~protostar.documents.sniff.sniff` returned."""
    if kind not in _LABELS:
        raise InputRejected(f"documents of type {kind!r} are not supported")
    if not path.is_file():
        raise FileNotFoundError(path)  # ours to fix, not the input's fault: let it escape
    warm()
    page_count = _check_pdf(path, max_pages) if kind == "pdf" else None
    elements = _partition(path, kind)
    if not elements and kind == "pdf":
        elements = _pdfium_elements(path)
        if not elements:
            raise InputRejected("no text could be extracted from the PDF (scanned or malformed PDF)")
        logger.info("%s: unstructured found no text, PDFium found %d pages of it", path.name, len(elements))
    if not elements:
        raise InputRejected(f"no text could be extracted from the {_LABELS[kind]}")
    return Parsed(elements=elements, page_count=page_count)


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


def _partition(path: Path, kind: str) -> list[Element]:
    partitioner = _partitioners()[kind]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            raw = partitioner(**_arguments(path, kind))
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


def _pdfium_elements(path: Path) -> list[Element]:
    """One NarrativeText element per page that has text, from PDFium's text layer."""
    elements = []
    document = pdfium.PdfDocument(path)
    try:
        for index in range(len(document)):
            page = document[index]
            textpage = page.get_textpage()
            try:
                text = _tidy(str(textpage.get_text_bounded()))
            finally:
                textpage.close()
                page.close()
            if text:
                elements.append(Element(text=text, type="NarrativeText", page=index + 1))
    finally:
        document.close()
    return elements


def _tidy(text: str) -> str:
    lines = (line.strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    return "\n".join(line for line in lines if line)


def _tiny_pdf(text: str) -> bytes:
    """A valid one-page PDF showing ``text`` (ASCII, no parentheses), built by hand."""
    content = b"BT /F1 12 Tf 72 720 Td (" + text.encode("ascii") + b") Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> "
        b"/Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
    ]
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
