"""The test corpus (``tests/corpus/``, real documents, see its ABOUT.md): where it is and what kind each file is."""

from __future__ import annotations

from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"

# Every file of the corpus but qa.jsonl (the retrieval questions), with the kind sniffing finds.
KINDS = {
    "ABOUT.md": "md",
    "LICENSE-unstructured-example-docs.md": "md",
    "README.md": "md",
    "docx-tables.docx": "docx",
    "embedded-images-tables.pdf": "pdf",
    "example-10k.html": "html",
    "failure-after-repair.pdf": "pdf",
    "fake-doc.rtf": "rtf",
    "fake-email-attachment.eml": "eml",
    "fake-email.msg": "msg",
    "fake-power-point.pptx": "pptx",
    "fake.odt": "odt",
    "family-day.eml": "eml",
    "handbook-872p.docx": "docx",
    "korean-text-with-tables.pdf": "pdf",
    "layout-parser-paper-fast.pdf": "pdf",
    "multi-column-2p.pdf": "pdf",
    "norwich-city.txt": "txt",
    "password.pdf": "pdf",
    "reliance.pdf": "pdf",
    "sample-presentation.pptx": "pptx",
    "stanley-cups.csv": "csv",
    "umlauts-non-utf8.md": "md",
    "vodafone.xlsx": "xlsx",
    "winter-sports.epub": "epub",
}
