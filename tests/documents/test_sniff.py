"""The type of an upload comes from its bytes; the name only picks among plain-text flavours."""

from __future__ import annotations

import io
import random
import zipfile
from typing import BinaryIO

import pytest

from protostar.documents.sniff import HEAD_BYTES, MAX_UNPACKED_BYTES, MAX_ZIP_ENTRIES, FileType, sniff
from protostar.errors import PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from tests.corpus_files import CORPUS, KINDS


def sniff_bytes(data: bytes, filename: str | None = None) -> FileType:
    return sniff(io.BytesIO(data), filename)


def test_every_corpus_file_is_covered() -> None:
    assert set(KINDS) | {"qa.jsonl"} == {path.name for path in CORPUS.iterdir()}


@pytest.mark.parametrize(("name", "kind"), sorted(KINDS.items()))
def test_corpus_file_kind(name: str, kind: str) -> None:
    with (CORPUS / name).open("rb") as file:
        assert sniff(file, name).kind == kind


def test_json_lines_are_unsupported() -> None:
    with (CORPUS / "qa.jsonl").open("rb") as file, pytest.raises(UnsupportedMediaType, match="JSON"):
        sniff(file, "qa.jsonl")


@pytest.mark.parametrize("name", ["layout-parser-paper-fast.pdf", "vodafone.xlsx", "fake-email.msg", "fake.odt"])
@pytest.mark.parametrize("fake_name", ["notes.txt", "data.csv", "page.html", None])
def test_binary_kinds_ignore_the_name(name: str, fake_name: str | None) -> None:
    assert sniff_bytes((CORPUS / name).read_bytes(), fake_name).kind == KINDS[name]


def test_a_named_pdf_that_is_text_is_text() -> None:
    assert sniff_bytes(b"just some words\n", "report.pdf").kind == "txt"


def test_content_type_and_extension_follow_the_kind() -> None:
    found = sniff_bytes((CORPUS / "docx-tables.docx").read_bytes(), "x.bin")
    assert found == FileType(
        kind="docx",
        content_type="application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        extension=".docx",
    )


def test_position_is_restored() -> None:
    with (CORPUS / "handbook-872p.docx").open("rb") as file:
        file.seek(123)
        sniff(file, None)
        assert file.tell() == 123
    data = io.BytesIO(b"")
    with pytest.raises(ValidationFailed):
        sniff(data, None)
    assert data.tell() == 0


class CountingReader(io.BufferedReader):
    def __init__(self, raw: BinaryIO) -> None:
        super().__init__(raw)  # type: ignore[arg-type]
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data


@pytest.mark.parametrize("name", ["example-10k.html", "handbook-872p.docx", "failure-after-repair.pdf"])
def test_reads_only_the_head_and_directories(name: str) -> None:
    with (CORPUS / name).open("rb", buffering=0) as raw:
        file = CountingReader(raw)
        sniff(file, name)
    assert file.bytes_read < 64 * 1024


def test_empty_file_fails_validation() -> None:
    with pytest.raises(ValidationFailed, match="empty"):
        sniff_bytes(b"", "empty.txt")


@pytest.mark.parametrize(
    ("head", "kind", "content_type"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "png", "image/png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "jpeg", "image/jpeg"),
        (b"II*\x00\x08\x00\x00\x00", "tiff", "image/tiff"),
        (b"MM\x00*\x00\x00\x00\x08", "tiff", "image/tiff"),
    ],
)
def test_png_jpeg_and_tiff_images_are_accepted_by_their_bytes(head: bytes, kind: str, content_type: str) -> None:
    detected = sniff_bytes(head + bytes(range(256)) * 4, "scan.txt")  # the name does not matter
    assert detected.kind == kind and detected.content_type == content_type


def test_damaged_image_headers_are_unsupported() -> None:
    with pytest.raises(UnsupportedMediaType, match="PNG"):
        sniff_bytes(b"\x89PNG\r\n\x1a\n", None)  # no IHDR chunk
    with pytest.raises(UnsupportedMediaType, match="TIFF"):
        sniff_bytes(b"II*\x00\x00\x00\x00\x00" + bytes(100), None)  # first IFD inside the header
    with pytest.raises(UnsupportedMediaType, match="GIF"):
        sniff_bytes(b"GIF89a\x01\x00\x01\x00\x80\x00\x00" + bytes(range(256)), None)  # no OCR for GIF


@pytest.mark.parametrize("seed", range(20))
def test_random_binary_is_unsupported(seed: int) -> None:
    data = random.Random(seed).randbytes(4096)
    with pytest.raises(UnsupportedMediaType, match="binary"):
        sniff_bytes(data, "random.txt")


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_zip_with_other_members_is_unsupported() -> None:
    with pytest.raises(UnsupportedMediaType, match="ZIP archives"):
        sniff_bytes(zip_bytes({"a.txt": b"hello", "b/c.csv": b"1,2"}), "document.docx")


def test_opendocument_spreadsheet_is_unsupported() -> None:
    ods = zip_bytes({"mimetype": b"application/vnd.oasis.opendocument.spreadsheet", "content.xml": b"<x/>"})
    with pytest.raises(UnsupportedMediaType, match=r"\.ods"):
        sniff_bytes(ods, "sheet.odt")


def test_zip_members_decide() -> None:
    assert sniff_bytes(zip_bytes({"ppt/presentation.xml": b"<p/>"}), "x.zip").kind == "pptx"
    assert sniff_bytes(zip_bytes({"xl/workbook.xml": b"<w/>"}), None).kind == "xlsx"


def test_a_document_that_unpacks_too_large_is_refused() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("word/document.xml", b"<w/>")
        with archive.open("word/bomb.xml", "w", force_zip64=True) as member:
            block = b"\0" * (16 * 1024 * 1024)
            for _ in range(MAX_UNPACKED_BYTES // len(block) + 1):
                member.write(block)
    assert buffer.tell() < 2 * 1024 * 1024  # a small upload...
    with pytest.raises(PayloadTooLarge, match="unpacks to"):  # ...that would not fit in a worker's memory
        sniff_bytes(buffer.getvalue(), "bomb.docx")


def test_truncated_zip_is_unsupported() -> None:
    data = (CORPUS / "docx-tables.docx").read_bytes()
    with pytest.raises(UnsupportedMediaType, match="damaged or truncated"):
        sniff_bytes(data[: len(data) // 2], "half.docx")


def test_damaged_ole_is_unsupported() -> None:
    data = (CORPUS / "fake-email.msg").read_bytes()
    with pytest.raises(UnsupportedMediaType, match="OLE2"):
        sniff_bytes(data[:600], "half.msg")
    with pytest.raises(UnsupportedMediaType, match="OLE2"):
        sniff_bytes(data[:8] + b"\0" * 600, "old.doc")


def test_html_variants() -> None:
    assert sniff_bytes(b"\xef\xbb\xbf  <!DOCTYPE html><html><body>x</body></html>").kind == "html"
    assert sniff_bytes(b"<html lang='en'><p>x</p></html>", "x.txt").kind == "html"
    xhtml = b'<?xml version="1.0"?>\n<!-- made by a tool -->\n<html xmlns="http://www.w3.org/1999/xhtml"/>'
    assert sniff_bytes(xhtml).kind == "html"


def test_xml_and_json_are_unsupported() -> None:
    with pytest.raises(UnsupportedMediaType, match="XML"):
        sniff_bytes(b'<?xml version="1.0"?>\n<invoice><total>3</total></invoice>', "x.html")
    with pytest.raises(UnsupportedMediaType, match="JSON"):
        sniff_bytes(b'{"name": "value", "list": [1, 2]}', "x.txt")
    with pytest.raises(UnsupportedMediaType, match="JSON"):
        sniff_bytes(b'[\n  {"a": 1}\n]\n', None)


def test_email_needs_a_real_header_block() -> None:
    message = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nHello\r\n"
    assert sniff_bytes(message, "x.txt").kind == "eml"
    folded = b"Received: from mx by mx;\n\tMon, 1 Jan 2024 00:00:00 +0000\nX-Spam: no\n\nbody\n"
    assert sniff_bytes(folded).kind == "eml"
    notes = b"Title: Meeting notes\nDate: 2024-01-01\n\nWe met.\n"
    assert sniff_bytes(notes).kind == "txt"
    assert sniff_bytes(b"Subject: only one line of header\n\nbody\n").kind == "txt"


def test_rtf() -> None:
    assert sniff_bytes(b"{\\rtf1\\ansi Hello}", "x.txt").kind == "rtf"


def test_legacy_8bit_text_is_text() -> None:
    assert sniff_bytes("Grüße aus Köln, schöne Straße.\n".encode("latin-1")).kind == "txt"
    assert sniff_bytes("## Überschrift\n\nText.\n".encode("cp1252")).kind == "md"


def test_utf8_cut_at_the_head_boundary_is_still_text() -> None:
    data = b"a" * (HEAD_BYTES - 1) + "é".encode() + b" more"
    assert sniff_bytes(data).kind == "txt"


def test_text_flavour_from_extension_and_structure() -> None:
    table = b"name,city,cups\nBlues,STL,1\nFlyers,PHI,2\n"
    assert sniff_bytes(table, "cups.CSV").kind == "csv"
    assert sniff_bytes(table, None).kind == "txt"
    assert sniff_bytes(b"a\tb\n1\t2\n", "x.tsv").kind == "csv"
    assert sniff_bytes(b"ragged,row\nonly one\n", "x.csv").kind == "txt"
    assert sniff_bytes(b"plain words\n", "notes.markdown").kind == "md"
    assert sniff_bytes(b"Intro\n\n# Heading\n\ntext\n", "notes.txt").kind == "md"
    assert sniff_bytes(b"see [the docs](https://example.com)\n").kind == "md"
    assert sniff_bytes(b"#hashtag is not a heading\n").kind == "txt"


def test_short_magic_numbers_do_not_misfire_on_text() -> None:
    assert sniff_bytes(b"BMW builds cars.\n").kind == "txt"
    assert sniff_bytes(b"MZ is a postcode.\n").kind == "txt"


def _zip_of(members: int, *, docx: bool = True) -> io.BytesIO:
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w", allowZip64=True) as archive:
        if docx:
            archive.writestr("word/document.xml", "<w:document/>")
        for i in range(members):
            archive.writestr(f"m/{i}", b"")
    return data


@pytest.mark.parametrize("members", [MAX_ZIP_ENTRIES + 1, 70_000], ids=["just-over", "zip64-count"])
def test_a_zip_with_too_many_members_is_refused_from_its_end_record(members: int) -> None:
    with pytest.raises(PayloadTooLarge, match="members"):
        sniff(_zip_of(members), "many.docx")


def test_a_zip_with_a_huge_directory_is_refused() -> None:
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        archive.writestr("word/document.xml", "<w:document/>")
        for i in range(80):
            archive.writestr(f"{i:04d}" + "n" * 60_000, b"")  # 80 names of 60 KB: 4.8 MB of directory
    with pytest.raises(PayloadTooLarge, match="directory"):
        sniff(data, "names.docx")


def test_a_zip_just_under_the_member_limit_is_read() -> None:
    assert sniff(_zip_of(MAX_ZIP_ENTRIES - 1), "fine.docx").kind == "docx"


def test_a_zip_without_an_end_record_is_damaged() -> None:
    data = _zip_of(3)
    truncated = io.BytesIO(data.getvalue()[:-30])
    with pytest.raises(UnsupportedMediaType, match="damaged or truncated"):
        sniff(truncated, "cut.docx")
