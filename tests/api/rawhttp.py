"""A client that streams a request body and stops as soon as the server answers, as a well-behaved client does
when a server refuses an upload early (httpx sends the whole body before it reads the response)."""

from __future__ import annotations

import json
import select
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

CHUNK = 64 * 1024


@dataclass
class Answer:
    status: int
    body: dict[str, object]
    sent: int  # body bytes the server took before it answered (or closed)


def stream(url: str, path: str, headers: dict[str, str], body: Iterator[bytes], *, chunked: bool) -> Answer:
    split = urlsplit(url)
    sock = socket.create_connection((split.hostname or "127.0.0.1", split.port or 80), timeout=30)
    head = [f"POST {path} HTTP/1.1", f"Host: {split.netloc}", *(f"{k}: {v}" for k, v in headers.items())]
    if chunked:
        head.append("Transfer-Encoding: chunked")
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    sent, received = 0, b""
    try:
        for block in body:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            frame = f"{len(block):x}\r\n".encode() + block + b"\r\n" if chunked else block
            try:
                sock.sendall(frame)
            except OSError:  # the server answered and closed: read what it said
                break
            sent += len(block)
        else:
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        received = _read_response(sock)
    finally:
        sock.close()
    status_line, _, rest = received.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return Answer(status=int(status_line.split()[1]), body=json.loads(_dechunk(rest, payload)), sent=sent)


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            block = sock.recv(65536)
        except OSError:
            return data
        if not block:
            return data
        data += block
        head, sep, payload = data.partition(b"\r\n\r\n")
        if sep and b"content-length:" in head.lower():
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            if len(payload) >= length:
                return data


def _dechunk(head: bytes, payload: bytes) -> bytes:
    if b"transfer-encoding: chunked" not in head.lower():
        return payload
    out, rest = b"", payload
    while rest:
        size, _, rest = rest.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out, rest = out + rest[:n], rest[n + 2 :]
    return out


def repeat(total: int, byte: bytes = b"a") -> Iterator[bytes]:
    block = byte * CHUNK
    for start in range(0, total, CHUNK):
        yield block[: min(CHUNK, total - start)]
