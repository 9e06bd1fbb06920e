"""Limits before work, on the live API: the key before the body, bodies counted as they stream in, uploads
stopped at the limit with or without a Content-Length, documented maximum sizes for what is stored, ZIP
containers judged from their directory within bounds."""

from __future__ import annotations

import io
import json
import os
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from protostar.api.guard import MULTIPART_SLACK
from protostar.api.schemas import MAX_METADATA_BYTES
from protostar.documents.sniff import MAX_UNPACKED_BYTES, MAX_ZIP_ENTRIES
from tests.api.rawhttp import CHUNK, repeat, stream
from tests.conftest import Live, wait_for
from tests.ingest.test_documents_api import upload

BIG = 200 * 1024 * 1024
SLACK = 32 * 1024 * 1024  # what socket buffers may take on top of what the API read before it answered


def api_process(live: Live) -> psutil.Process:
    pid = live.supervisor.pid("api")
    assert pid is not None
    return psutil.Process(pid)


def rss(live: Live) -> int:
    return int(api_process(live).memory_info().rss)


def json_body(total: int) -> Iterator[bytes]:
    yield b'{"title": "'
    yield from repeat(total - 13)
    yield b'"}'


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_200_mb_body_without_a_key_is_401_before_it_is_read(live: Live, chunked: bool) -> None:
    before = rss(live)
    headers = {"Content-Type": "application/json"} | ({} if chunked else {"Content-Length": str(BIG)})
    answer = stream(live.api_url, "/v1/sessions", headers, json_body(BIG), chunked=chunked)
    assert answer.status == 401 and answer.body["error"]["code"] == "unauthorized"  # type: ignore[index]
    assert answer.sent < SLACK
    assert rss(live) - before < 64 * 1024 * 1024


def test_malformed_json_without_a_key_is_401_not_422(live: Live) -> None:
    with live.client("") as client:
        response = client.post("/v1/probes", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 401


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_200_mb_json_body_with_a_key_is_413_without_being_buffered(live: Live, chunked: bool) -> None:
    before = rss(live)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {live.admin_key}"}
    if not chunked:
        headers["Content-Length"] = str(BIG)
    answer = stream(live.api_url, "/v1/sessions", headers, json_body(BIG), chunked=chunked)
    assert answer.status == 413, answer.body
    assert answer.body["error"]["code"] == "payload_too_large"  # type: ignore[index]
    assert str(live.settings.max_body_bytes) in answer.body["error"]["message"]  # type: ignore[index]
    assert answer.sent < SLACK
    assert rss(live) - before < 64 * 1024 * 1024


def test_a_body_just_under_the_limit_is_read(api: httpx.Client, live: Live) -> None:
    response = api.post("/v1/search", json={"query": "x" * 4001, "pad": "a" * (live.settings.max_body_bytes - 4200)})
    assert response.status_code == 422  # read and validated: the query is too long, not the body


class TempFiles:
    """The largest file the API process holds open in the temporary directory, sampled while a test runs."""

    def __init__(self, pid: int) -> None:
        self.fds, self.largest, self.seen = Path(f"/proc/{pid}/fd"), 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def open_sizes(self) -> list[int]:
        sizes = []
        for fd in self.fds.iterdir():
            try:
                if os.readlink(fd).startswith(tempfile.gettempdir()):
                    sizes.append(fd.stat().st_size)
            except OSError:
                continue  # closed meanwhile
        return sizes

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            sizes = self.open_sizes()
            self.seen += bool(sizes)
            self.largest = max([self.largest, *sizes])

    def __enter__(self) -> TempFiles:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def multipart(total: int) -> Iterator[bytes]:
    boundary = "limitboundary"
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()
    yield from repeat(total)
    yield f"\r\n--{boundary}--\r\n".encode()


def test_a_chunked_upload_over_the_limit_stops_at_the_limit(live: Live) -> None:
    limit = live.settings.max_upload_bytes
    headers = {
        "Content-Type": "multipart/form-data; boundary=limitboundary",
        "Authorization": f"Bearer {live.admin_key}",
    }
    with TempFiles(api_process(live).pid) as temp:
        answer = stream(live.api_url, "/v1/documents", headers, multipart(limit + 24 * 1024 * 1024), chunked=True)
    assert answer.status == 413, answer.body
    assert answer.body["error"]["code"] == "payload_too_large"  # type: ignore[index]
    assert answer.sent < limit + SLACK
    assert temp.largest <= limit + MULTIPART_SLACK + CHUNK  # the spooled file never passed the limit
    wait_for(lambda: not temp.open_sizes(), timeout=10, what="the API to close its temporary file")


def test_an_upload_declaring_too_much_is_413_before_it_is_read(live: Live) -> None:
    headers = {
        "Content-Type": "multipart/form-data; boundary=limitboundary",
        "Authorization": f"Bearer {live.admin_key}",
        "Content-Length": str(BIG),
    }
    answer = stream(live.api_url, "/v1/documents", headers, multipart(BIG), chunked=False)
    assert answer.status == 413 and answer.sent < SLACK


def test_metadata_over_its_maximum_is_422(api: httpx.Client) -> None:
    big = {"notes": "x" * MAX_METADATA_BYTES}
    response = api.post("/v1/sessions", json={"metadata": big})
    assert response.status_code == 422 and "metadata" in response.json()["error"]["message"]
    assert api.post("/v1/sessions", json={"metadata": {"notes": "x" * 1000}}).status_code == 201
    response = upload(api, "note.txt", b"hello metadata", metadata=json.dumps(big))
    assert response.status_code == 422 and "metadata" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/sessions", {"title": "t" * 201}),
        ("/v1/sessions", {"title": "nul\u0000"}),
        ("/v1/sessions", {"metadata": {"k": "nul\u0000"}}),
        ("/v1/search", {"query": "q" * 4001}),
        ("/v1/sessions/00000000-0000-0000-0000-000000000000/messages", {"content": "c" * 16_001}),
    ],
)
def test_text_over_its_maximum_or_with_nul_is_422(api: httpx.Client, path: str, body: dict[str, object]) -> None:
    response = api.post(path, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_failed"


def _zip_with_members(members: int) -> bytes:
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        archive.writestr("word/document.xml", "<w:document/>")
        for i in range(members):
            archive.writestr(f"m/{i}", b"")
    return data.getvalue()


def test_zip_inspection_is_bounded_on_the_live_api(api: httpx.Client, live: Live) -> None:
    """A DOCX of too many members, or one that would unpack past the limit, is refused at upload (413) from its
    directory alone: nothing is queued, and the API's memory stays flat."""
    before = rss(live)
    many = upload(api, "many.docx", _zip_with_members(MAX_ZIP_ENTRIES + 1))
    assert many.status_code == 413 and "members" in many.json()["error"]["message"], many.text
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("word/document.xml", b"<w/>")
        with archive.open("word/bomb.xml", "w", force_zip64=True) as member:
            block = b"\0" * (16 * 1024 * 1024)
            for _ in range(MAX_UNPACKED_BYTES // len(block) + 1):
                member.write(block)
    unpacks = upload(api, "bomb.docx", bomb.getvalue())
    assert unpacks.status_code == 413 and "unpacks to" in unpacks.json()["error"]["message"], unpacks.text
    assert rss(live) - before < 64 * 1024 * 1024
