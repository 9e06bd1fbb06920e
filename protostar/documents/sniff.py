"""Decide what an upload is from its bytes, cheaply, before anything is stored or queued.

The API process imports this module, so it uses only the standard library and ``olefile``: never
``unstructured``. :func:`sniff` reads the first few KiB of the file, plus the central directory of a ZIP
container or the directory of an OLE2 compound file, and puts the file position back where it found it.

The bytes decide the kind; the file name is ignored except inside the text family (plain text, Markdown and
CSV look alike as bytes), where the extension refines the flavour:

* ``.csv`` / ``.tsv`` give ``csv`` when the head of the file has a consistent number of fields per row;
* ``.md`` / ``.markdown`` give ``md``;
* otherwise the text is ``md`` when it shows Markdown structure (``#`` headings, fenced code, links), else
  ``txt``. Without a ``.csv``/``.tsv`` name, comma-separated text is ``txt``.

Text is accepted when it has no NUL bytes and decodes as UTF-8 or reads like a legacy 8-bit encoding
(Windows-1252 / Latin-1). PNG, JPEG and TIFF images are accepted (read by OCR) once their header checks out.
JSON, XML other than (X)HTML, other images, archives, executables and legacy Office files raise
:class:`UnsupportedMediaType` naming what was found, and so does a ZIP or OLE2 container whose directory is
damaged or truncated; an empty file raises :class:`ValidationFailed`.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import struct
import zipfile
from dataclasses import dataclass
from typing import BinaryIO

import olefile  # type: ignore[import-untyped]

from protostar.errors import PayloadTooLarge, UnsupportedMediaType, ValidationFailed

logger = logging.getLogger(__name__)

HEAD_BYTES = 8 * 1024
"""How much of the file the content checks look at (the container directories aside)."""

MAX_UNPACKED_BYTES = 1024 * 1024 * 1024
"""A ZIP-based document (DOCX, XLSX, ...) whose members add up to more than this is refused before parsing:
parsers hold the unpacked XML in memory, so a small, highly compressed file could exhaust a worker."""

MAX_ZIP_ENTRIES = 20_000
MAX_ZIP_DIRECTORY_BYTES = 4 * 1024 * 1024
"""A ZIP container's central directory is read whole (``zipfile`` keeps an object per member), so it is
measured first from its end record: more members or a larger directory than these is refused, which bounds the
memory and time the check takes whatever the upload holds. Real documents have hundreds of members."""


@dataclass(frozen=True)
class FileType:
    kind: str
    content_type: str
    extension: str


_TYPES: dict[str, tuple[str, str]] = {
    "pdf": ("application/pdf", ".pdf"),
    "docx": ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", ".docx"),
    "pptx": ("application/vnd.openxmlformats-officedocument.presentationml.presentation", ".pptx"),
    "xlsx": ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", ".xlsx"),
    "odt": ("application/vnd.oasis.opendocument.text", ".odt"),
    "epub": ("application/epub+zip", ".epub"),
    "msg": ("application/vnd.ms-outlook", ".msg"),
    "eml": ("message/rfc822", ".eml"),
    "rtf": ("application/rtf", ".rtf"),
    "html": ("text/html", ".html"),
    "md": ("text/markdown", ".md"),
    "csv": ("text/csv", ".csv"),
    "txt": ("text/plain", ".txt"),
    "png": ("image/png", ".png"),
    "jpeg": ("image/jpeg", ".jpg"),
    "tiff": ("image/tiff", ".tif"),
}

SUPPORTED_KINDS: frozenset[str] = frozenset(_TYPES)


def file_type(kind: str) -> FileType:
    """The :class:`FileType` of a supported kind."""
    content_type, extension = _TYPES[kind]
    return FileType(kind=kind, content_type=content_type, extension=extension)


def sniff(file: BinaryIO, filename: str | None) -> FileType:
    """Return the type of ``file`` (read from offset 0), or raise why it cannot be ingested."""
    position = file.tell()
    try:
        file.seek(0)
        head = file.read(HEAD_BYTES)
        if not head:
            raise ValidationFailed("the file is empty")
        kind = _sniff_kind(file, head, filename)
    finally:
        file.seek(position)
    logger.debug("sniffed %r as %s", filename, kind)
    return file_type(kind)


def _sniff_kind(file: BinaryIO, head: bytes, filename: str | None) -> str:
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _zip_kind(file)
    if head.startswith(_OLE_MAGIC):
        return _ole_kind(file)
    if _PDF_HEADER.search(head[:1024]):
        return "pdf"
    if head.lstrip().startswith(b"{\\rtf"):
        return "rtf"
    image = _image_kind(head)
    if image is not None:
        return image
    strong = _signature(head, _STRONG_SIGNATURES)
    if strong:
        raise UnsupportedMediaType(strong)
    truncated = len(head) == HEAD_BYTES
    text = _decode_head(head, truncated=truncated)
    if text is None:
        weak = _signature(head, _WEAK_SIGNATURES)
        raise UnsupportedMediaType(weak or "the file is binary data of an unknown type, which is not supported")
    return _text_kind(text, filename, truncated=truncated)


# --- containers -------------------------------------------------------------------------------------

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"

_ZIP_MEMBERS = {"word/document.xml": "docx", "ppt/presentation.xml": "pptx", "xl/workbook.xml": "xlsx"}

_ZIP_MIMETYPES = {"application/vnd.oasis.opendocument.text": "odt", "application/epub+zip": "epub"}

_OPENDOCUMENT_NAMES = {
    "application/vnd.oasis.opendocument.spreadsheet": "OpenDocument spreadsheets (.ods) are not supported",
    "application/vnd.oasis.opendocument.presentation": "OpenDocument presentations (.odp) are not supported",
    "application/vnd.oasis.opendocument.graphics": "OpenDocument drawings (.odg) are not supported",
}

# zipfile raises RuntimeError for an encrypted member and NotImplementedError for an unknown compression.
_ZIP_ERRORS = (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError, RuntimeError)


def _zip_kind(file: BinaryIO) -> str:
    entries, directory = _zip_directory(file)
    if entries > MAX_ZIP_ENTRIES or directory > MAX_ZIP_DIRECTORY_BYTES:
        raise PayloadTooLarge(
            f"the document is a ZIP container of {entries:,} members ({directory:,} bytes of directory); "
            f"the limit is {MAX_ZIP_ENTRIES:,} members and {MAX_ZIP_DIRECTORY_BYTES:,} bytes"
        )
    file.seek(0)
    try:
        with zipfile.ZipFile(file) as archive:  # reads only the central directory
            names = set(archive.namelist())
            unpacked = sum(info.file_size for info in archive.infolist())
            office = next((kind for member, kind in _ZIP_MEMBERS.items() if member in names), None)
            mimetype = _zip_mimetype(archive) if office is None and "mimetype" in names else ""
    except _ZIP_ERRORS as exc:
        raise UnsupportedMediaType(f"the file looks like a ZIP container but is damaged or truncated ({exc})") from exc
    if unpacked > MAX_UNPACKED_BYTES:
        raise PayloadTooLarge(
            f"the document unpacks to {unpacked / 2**20:,.0f} MiB; the limit is {MAX_UNPACKED_BYTES / 2**20:,.0f} MiB"
        )
    if office is not None:
        return office
    if mimetype in _ZIP_MIMETYPES:
        return _ZIP_MIMETYPES[mimetype]
    if mimetype in _OPENDOCUMENT_NAMES:
        raise UnsupportedMediaType(_OPENDOCUMENT_NAMES[mimetype])
    if "META-INF/container.xml" in names and any(name.endswith(".opf") for name in names):
        return "epub"  # an EPUB whose writer left out the mimetype member
    raise UnsupportedMediaType("ZIP archives are not supported; upload the documents inside it one by one")


_EOCD = struct.Struct("<4sHHHHIIH")  # the end of central directory record
_EOCD64_LOCATOR = struct.Struct("<4sIQI")
_EOCD64 = struct.Struct("<4sQHHIIQQQQ")


def _zip_directory(file: BinaryIO) -> tuple[int, int]:
    """Members and central directory bytes, from the end record (in the last 64 KiB of the file)."""
    end = file.seek(0, 2)
    for window in (1024, _EOCD.size + 0xFFFF):  # the record, then a comment: usually none, at most 64 KiB
        start = max(0, end - window)
        file.seek(start)
        tail = file.read(end - start)
        at = tail.rfind(b"PK\x05\x06")
        if at >= 0 or start == 0:
            break
    if at < 0 or len(tail) - at < _EOCD.size:
        raise UnsupportedMediaType("the file looks like a ZIP container but is damaged or truncated (no end record)")
    _, _, _, _, entries, size, _, _ = _EOCD.unpack_from(tail, at)
    locator = at - _EOCD64_LOCATOR.size
    if (entries == 0xFFFF or size == 0xFFFFFFFF) and locator >= 0 and tail[locator : locator + 4] == b"PK\x06\x07":
        _, _, offset, _ = _EOCD64_LOCATOR.unpack_from(tail, locator)
        file.seek(offset)
        record = file.read(_EOCD64.size)
        if len(record) == _EOCD64.size and record[:4] == b"PK\x06\x06":
            entries, size = _EOCD64.unpack(record)[7:9]
    return entries, size


def _zip_mimetype(archive: zipfile.ZipFile) -> str:
    info = archive.getinfo("mimetype")
    if info.file_size > 200:
        return ""
    return archive.read(info).decode("ascii", errors="replace").strip()


_OLE_STREAMS = (
    ("encryptedpackage", "password-protected Office files are not supported; remove the password and upload again"),
    ("worddocument", "legacy Word .doc files are not supported; save it as .docx"),
    ("powerpoint document", "legacy PowerPoint .ppt files are not supported; save it as .pptx"),
    ("workbook", "legacy Excel .xls files are not supported; save it as .xlsx"),
    ("book", "legacy Excel .xls files are not supported; save it as .xlsx"),
)

_OLE_ERRORS = (OSError, ValueError, IndexError, struct.error)  # olefile's OleFileError is an OSError


def _ole_kind(file: BinaryIO) -> str:
    file.seek(0)
    try:
        ole = olefile.OleFileIO(file)
        try:
            names = {str(path[0]).lower() for path in ole.listdir(streams=True, storages=True)}
        finally:
            ole.close()  # olefile does not close a file object it was given
    except _OLE_ERRORS as exc:
        raise UnsupportedMediaType(f"the file looks like an Office (OLE2) file but is damaged ({exc})") from exc
    if any(name.startswith("__substg1.0_") for name in names):
        return "msg"
    for stream, message in _OLE_STREAMS:
        if stream in names:
            raise UnsupportedMediaType(message)
    raise UnsupportedMediaType("this Office (OLE2) file type is not supported")


# --- other binary formats ---------------------------------------------------------------------------

_PDF_HEADER = re.compile(rb"(?:^|[\r\n])%PDF-\d\.\d")

# Images read by OCR: the magic number, then a check that the header is whole (PNG's IHDR chunk first, a JPEG
# marker after SOI, a TIFF's first IFD offset inside the file's head or beyond it but not before the header).
_IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)


def _image_kind(head: bytes) -> str | None:
    kind = next((kind for magic, kind in _IMAGE_MAGIC if head.startswith(magic)), None)
    if kind is None:
        return None
    if kind == "png" and head[12:16] != b"IHDR":
        raise UnsupportedMediaType("the file looks like a PNG image but its header is damaged")
    if kind == "jpeg" and len(head) < 4:
        raise UnsupportedMediaType("the file looks like a JPEG image but is truncated")
    if kind == "tiff":
        if len(head) < 8:
            raise UnsupportedMediaType("the file looks like a TIFF image but is truncated")
        offset = struct.unpack("<I" if head[:2] == b"II" else ">I", head[4:8])[0]
        if offset < 8:
            raise UnsupportedMediaType("the file looks like a TIFF image but its header is damaged")
    return kind


# Magic numbers that text cannot start with: checked before the text test.
_STRONG_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip archives"),
    (b"\xfd7zXZ\x00", "xz archives"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archives"),
    (b"Rar!\x1a\x07", "RAR archives"),
    (b"\x7fELF", "executables"),
    (b"\xcf\xfa\xed\xfe", "executables"),
    (b"SQLite format 3\x00", "SQLite databases"),
    (b"\xff\xfe", "UTF-16 text files (save it as UTF-8)"),
    (b"\xfe\xff", "UTF-16 text files (save it as UTF-8)"),
)

# Short, printable magic numbers: only named once the head has proved not to be text, so that they
# cannot misfire on text that happens to begin with those letters ("BMW ...").
_WEAK_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"GIF8", "GIF images"),
    (b"BM", "BMP images"),
    (b"RIFF", "RIFF media files (WebP, WAV, AVI)"),
    (b"BZh", "bzip2 archives"),
    (b"MZ", "Windows executables"),
    (b"ID3", "MP3 audio files"),
)


def _signature(head: bytes, signatures: tuple[tuple[bytes, str], ...]) -> str | None:
    for magic, name in signatures:
        if head.startswith(magic):
            return f"{name} are not supported"
    return None


# --- text ----------------------------------------------------------------------------------------------

_TEXT_CONTROLS = frozenset("\t\n\r\f\v\x1a")  # \x1a: the DOS end-of-file mark


def _decode_head(head: bytes, *, truncated: bool) -> str | None:
    """The head as text (UTF-8, else Windows-1252/Latin-1), or None when it does not read as text."""
    if b"\x00" in head:
        return None
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if truncated and exc.start >= len(head) - 3 and exc.reason == "unexpected end of data":
            text = head[: exc.start].decode("utf-8-sig")  # a character cut by the head boundary
        else:
            return _decode_legacy(head)
    return text if _few_controls(text) else None


def _decode_legacy(head: bytes) -> str | None:
    high = sum(1 for byte in head if byte >= 0x80)
    if high > len(head) * 0.3:  # legacy-encoded prose is mostly ASCII; random binary is half high bytes
        return None
    text = head.decode("latin-1")
    return text if _few_controls(text) else None


def _few_controls(text: str) -> bool:
    controls = sum(1 for char in text if (char < " " or char == "\x7f") and char not in _TEXT_CONTROLS)
    return controls <= len(text) * 0.01


_XML_PROLOGUE = re.compile(r"\A(?:\s+|<\?xml[^>]*\?>|<!--.*?-->)*", re.DOTALL)
_HTML_START = re.compile(
    r"<!doctype\s+html|<(?:[\w-]+:)?(?:html|head|body|title|meta|div|p|h[1-6]|table|section|article)[\s>/]",
    re.IGNORECASE,
)


def _text_kind(text: str, filename: str | None, *, truncated: bool) -> str:
    if text.startswith("%!PS"):
        raise UnsupportedMediaType("PostScript files are not supported")
    if _looks_like_email(text):
        return "eml"
    body = _XML_PROLOGUE.sub("", text, count=1)
    if _HTML_START.match(body):
        return "html"
    if body.startswith("<"):
        raise UnsupportedMediaType("XML files other than HTML/XHTML are not supported")
    if _looks_like_json(body):
        raise UnsupportedMediaType("JSON files are not supported")
    return _text_flavour(text, filename, truncated=truncated)


_HEADER_LINE = re.compile(r"^[!-9;-~]+:")
_EMAIL_STRONG = frozenset({"received", "message-id", "mime-version", "return-path"})
_EMAIL_WEAK = frozenset({"from", "to", "subject", "date"})


def _looks_like_email(text: str) -> bool:
    """An RFC 822 header block at the very top: two or more ``Name: value`` lines up to a blank line.

    It must name a strong e-mail header (Received, Message-ID, MIME-Version, Return-Path) or two of From,
    To, Subject, Date, so that a note that opens with ``Title:`` / ``Date:`` metadata stays text.
    """
    names: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            break
        if line[0] in " \t" and names:  # a folded continuation of the previous header
            continue
        if not _HEADER_LINE.match(line):
            return False
        names.append(line.split(":", 1)[0].lower())
    found = set(names)
    return len(names) >= 2 and (bool(found & _EMAIL_STRONG) or len(found & _EMAIL_WEAK) >= 2)


def _looks_like_json(body: str) -> bool:
    if not body.startswith(("{", "[")):
        return False
    first_line = body.split("\n", 1)[0].strip()
    try:
        json.loads(first_line)  # a JSON document on one line, or the first record of JSON Lines
    except ValueError:
        return body.startswith(('{"', '["', "[{")) or first_line in ("{", "[")
    return True


_MARKDOWN = re.compile(r"^(?:#{1,6} \S|```|~~~)|\[[^\]\n]+\]\([^)\s]+\)", re.MULTILINE)


def _text_flavour(text: str, filename: str | None, *, truncated: bool) -> str:
    extension = _extension(filename)
    if extension in (".csv", ".tsv") and _consistent_rows(text, "\t" if extension == ".tsv" else ",", truncated):
        return "csv"
    if extension in (".md", ".markdown") or _MARKDOWN.search(text):
        return "md"
    return "txt"


def _extension(filename: str | None) -> str:
    if not filename or "." not in filename:
        return ""
    return "." + filename.rsplit(".", 1)[1].lower()


def _consistent_rows(text: str, delimiter: str, truncated: bool) -> bool:
    """True when every row in the head has the same number (two or more) of fields."""
    lines = text.splitlines()
    if truncated and len(lines) > 1:
        lines = lines[:-1]  # the last line may be cut by the head boundary
    try:
        widths = {len(row) for row in csv.reader(lines, delimiter=delimiter) if row}
    except csv.Error:
        return False
    return len(widths) == 1 and widths != {1}
