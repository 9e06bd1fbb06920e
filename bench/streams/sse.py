"""A light Server-Sent Events reader on raw asyncio sockets (HTTP/1.1, chunked), so that a thousand streams in
one benchmark process cost little more than the bare XREAD readers they are compared with."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Follower:
    job_id: str
    status: int = 0
    lags: list[float] = field(default_factory=list)  # seconds, published (data "t") -> bytes read here
    received: int = 0  # events with a "t" stamp
    events: int = 0
    done: bool = False
    error: str | None = None
    opened: asyncio.Event = field(default_factory=asyncio.Event)


async def follow(url: str, key: str, follower: Follower) -> None:
    """GET the job's events until ``done``; a lag sample for every event whose data carries ``t``."""
    split = urlsplit(url)
    writer = None
    try:
        reader, writer = await asyncio.open_connection(split.hostname, split.port)
        path = f"/v1/jobs/{follower.job_id}/events"
        head = f"GET {path} HTTP/1.1\r\nHost: {split.netloc}\r\nAuthorization: Bearer {key}\r\n\r\n"
        writer.write(head.encode())
        await writer.drain()
        status_line = await reader.readline()
        follower.status = int(status_line.split()[1])
        while (await reader.readline()).strip():  # headers
            pass
        if follower.status != 200:
            follower.error = f"HTTP {follower.status}"
            return
        follower.opened.set()
        buffer = b""
        while True:
            size = int((await reader.readline()).strip() or b"0", 16)
            if size == 0:
                follower.error = follower.error if follower.done else "ended before done"
                return
            buffer += await reader.readexactly(size + 2)
            at = time.time()
            buffer = buffer[:-2]
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                if _event(block, at, follower):
                    return
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        follower.error = type(exc).__name__
    finally:
        follower.opened.set()
        if writer is not None:
            writer.close()


def _event(block: bytes, at: float, follower: Follower) -> bool:
    kind, data = "", ""
    for line in block.decode().splitlines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
    if not data:
        return False
    follower.events += 1
    payload = json.loads(data)
    if "t" in payload:
        follower.lags.append(at - float(payload["t"]))
        follower.received += 1
    if kind == "done":
        follower.done = True
        return True
    return False
