"""The documents and questions the benchmark uses: ``tests/corpus`` (real documents, see its ABOUT.md)."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

from bench.common import CORPUS, QaQuestion, qa_questions

NOT_DOCUMENTS = {"qa.jsonl"}  # the questions
NOT_PAGES = {"password.pdf", "failure-after-repair.pdf"}  # fail (encrypted) or parse through the fallback
PAGES_SOURCE = "layout-parser-paper-fast.pdf"  # repeated into the long PDF


Question = QaQuestion


def documents() -> list[Path]:
    """Every corpus file the ingest tests upload."""
    return [p for p in sorted(CORPUS.iterdir()) if p.name not in NOT_DOCUMENTS and not p.name.startswith("LICENSE")]


def page_pdfs() -> list[Path]:
    """The text PDFs of the corpus (the end-to-end pages/s phase)."""
    return [p for p in documents() if p.suffix == ".pdf" and p.name not in NOT_PAGES]


def questions() -> list[Question]:
    return qa_questions()


def long_pdf(pages: int) -> bytes:
    """A ``pages``-page PDF: the pages of ``PAGES_SOURCE`` over and over (pypdf)."""
    from pypdf import PdfReader, PdfWriter

    source = PdfReader(str(CORPUS / PAGES_SOURCE))
    writer = PdfWriter()
    while len(writer.pages) < pages:
        writer.add_page(source.pages[len(writer.pages) % len(source.pages)])
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def unique(data: bytes) -> bytes:
    """The same document with a comment line after ``%%EOF``: new bytes, so upload dedup (sha256) cannot
    answer with an earlier document; readers ignore it."""
    return data + b"\n%protostar-bench " + uuid.uuid4().hex.encode() + b"\n"


def reciprocal_rank(question: Question, hits: list[tuple[str, str]]) -> float:
    """1/rank of the first hit (filename, text) that answers ``question``; 0 when none does."""
    for rank, (filename, text) in enumerate(hits, start=1):
        if question.answered_by(filename, text):
            return 1.0 / rank
    return 0.0
