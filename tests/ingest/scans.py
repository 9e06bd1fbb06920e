"""Scanned documents for the OCR tests: a text PDF built by hand, rendered by PDFium to images, and the images
written back as a PDF without any text layer (or as a PNG). The facts are invented, so only OCR can find them."""

from __future__ import annotations

import io

import pypdfium2 as pdfium  # type: ignore[import-untyped]

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


def text_pdf(pages: list[list[str]]) -> bytes:
    """A PDF with one page per list of lines, in 16 pt Helvetica (ASCII, no parentheses or backslashes)."""
    count = len(pages)
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % (4 + 2 * i) for i in range(count)), count),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, lines in enumerate(pages):
        body = b"BT /F1 16 Tf 20 TL 72 720 Td " + b" ".join(b"(%s) Tj T*" % line.encode("ascii") for line in lines)
        content = body + b" ET"
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
