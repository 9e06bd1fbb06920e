"""Small SSE readers for tests: one over httpx, and a raw asyncio one for many streams at once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx


@dataclass
class SSE:
    id: str
    event: str
    data: dict[str, Any]


def read_events(
    client: httpx.Client,
    job_id: str,
    *,
    last_event_id: str | None = None,
    stop_after: int | None = None,
    timeout: float = 60,
) -> Iterator[SSE]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout) as response:
        response.raise_for_status()
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        count = 0
        for line in response.iter_lines():
            if line.startswith(":"):
                continue
            if line == "":
                if "id" in fields:  # a block without an id (the stream's opening ``retry:``) is no event
                    yield SSE(fields["id"], fields["event"], json.loads(fields["data"]))
                    count += 1
                    fields = {}
                    if stop_after is not None and count >= stop_after:
                        return
                fields = {}
                continue
            key, _, value = line.partition(": ")
            fields[key] = value


@dataclass
class Followed:
    """What one raw follower read: HTTP status, event ids and types, comments, the ``retry:`` hint."""

    status: int = 0
    ids: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: str | None = None
    ended: bool = False  # the response ended (the server closed it), rather than the connection breaking


async def follow(
    base_url: str, job_id: str, key: str, *, after: str = "", opened: asyncio.Event | None = None
) -> Followed:
    """Read a job's events over a raw asyncio socket (HTTP/1.1, chunked) until the server ends the response:
    cheap enough for a thousand at once in one test process (httpx's pool slows down with that many)."""
    split = urlsplit(base_url)
    out = Followed()
    reader, writer = await asyncio.open_connection(split.hostname, split.port)
    try:
        head = [f"GET /v1/jobs/{job_id}/events HTTP/1.1", f"Host: {split.netloc}", f"Authorization: Bearer {key}"]
        if after:
            head.append(f"Last-Event-ID: {after}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        await writer.drain()
        out.status = int((await reader.readline()).split()[1])
        while (await reader.readline()).strip():
            pass
        if opened is not None:
            opened.set()
        if out.status != 200:
            return out
        buffer = b""
        while size := int((await reader.readline()).strip() or b"0", 16):
            buffer += (await reader.readexactly(size + 2))[:-2]
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                _parse(block.decode(), out)
        out.ended = True
        return out
    finally:
        if opened is not None:
            opened.set()
        writer.close()


def _parse(block: str, out: Followed) -> None:
    fields: dict[str, str] = {}
    for line in block.splitlines():
        if line.startswith(":"):
            out.comments.append(line)
        elif line.startswith("retry:"):
            out.retry = line.partition(":")[2].strip()
        else:
            name, _, value = line.partition(": ")
            fields[name] = value
    if "id" in fields:
        out.ids.append(fields["id"])
        out.types.append(fields["event"])
