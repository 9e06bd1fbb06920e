"""A sequential HTTP client for the one-at-a-time measurements of ``bench.dispatch`` (the submit-path
breakdown and enqueue-to-start latency): one keep-alive connection over a plain socket."""

from __future__ import annotations

import socket
import time


class RawHttp:
    """One keep-alive HTTP/1.1 connection over a plain socket: the cheapest possible sequential client."""

    IDLE = 3.0  # uvicorn closes a keep-alive connection idle for 5 s: reconnect before that

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._connect()

    def _connect(self) -> None:
        self.sock = socket.create_connection((self.host, self.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.used = time.monotonic()

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
        if time.monotonic() - self.used > self.IDLE:
            self.sock.close()
            self._connect()
        try:
            return self._request(method, path, headers, body)
        finally:
            self.used = time.monotonic()

    def _request(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        while len(self.buf) < length:
            self._fill()
        data, self.buf = self.buf[:length], self.buf[length:]
        return int(head[9:12]), data

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the API closed the connection")
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()
