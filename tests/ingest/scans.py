"""Scanned documents for the OCR tests: a text PDF (``parse.text_pdf``), rendered by PDFium to images, and the images
written back as a PDF without any text layer (or as a PNG). The facts are invented, so only OCR can find them."""

from __future__ import annotations

import io

import pypdfium2 as pdfium  # type: ignore[import-untyped]

from protostar.ingest.parse import text_pdf

FACTS = [
    [
        "Harbour Records of Vellmar Point",
        "The lighthouse of Vellmar Point was built in 1873",
        "by the engineer Odile Brankov, who used granite",
        "quarried on the island of Threnody.",
    ],
    [
        "The Quillon Orchard",
        "The Quillon orchard grows forty-two kinds of pear.",
        "Its oldest tree was planted by Matthias Oberlund",
        "and still gives fruit every second autumn.",
    ],
    [
        "Zephyrine Glassworks",
        "The Zephyrine glassworks melts sand at 1450 degrees",
        "and ships blue bottles to the port of Castellane.",
    ],
]


def _images(pdf: bytes, dpi: int) -> list[object]:
    document = pdfium.PdfDocument(pdf)
    try:
        return [document[i].render(scale=dpi / 72, grayscale=True).to_pil() for i in range(len(document))]
    finally:
        document.close()


def scanned_pdf(pages: list[list[str]], dpi: int = 150) -> bytes:
    """The text PDF of ``pages`` as a scan would have it: one image per page, no text layer."""
    images = _images(text_pdf(pages), dpi)
    out = io.BytesIO()
    images[0].save(out, format="PDF", save_all=True, append_images=images[1:], resolution=dpi)  # type: ignore[attr-defined]
    return out.getvalue()


def png(lines: list[str], dpi: int = 150) -> bytes:
    """One page of text as a PNG image."""
    out = io.BytesIO()
    _images(text_pdf([lines]), dpi)[0].save(out, format="PNG")  # type: ignore[attr-defined]
    return out.getvalue()


def tiff(pages: list[list[str]], dpi: int = 150) -> bytes:
    """One TIFF frame per page of text."""
    images = _images(text_pdf(pages), dpi)
    out = io.BytesIO()
    images[0].save(out, format="TIFF", save_all=True, append_images=images[1:])  # type: ignore[attr-defined]
    return out.getvalue()
