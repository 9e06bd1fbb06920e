"""A delivery's HTTP call ends within its connect and read timeouts together, however the receiver paces its
answer (``protostar.webhooks.deadline``): a receiver that trickles its headers, each byte well within the read
timeout, is cut off instead of holding a worker thread until it is done."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from protostar.settings import Settings
from protostar.webhooks.address import check
from protostar.webhooks.deliver import post

TRICKLE = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 40 + b"\r\nContent-Length: 0\r\n\r\n"


def serve(listener: socket.socket, pause: float) -> None:
    """Answer each connection with ``TRICKLE``, one byte every ``pause`` seconds (all at once when 0)."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.recv(65536)
            try:
                if not pause:
                    conn.sendall(TRICKLE)
                for byte in TRICKLE if pause else b"":
                    conn.sendall(bytes([byte]))
                    time.sleep(pause)
            except OSError:
                pass  # the caller gave up


@pytest.fixture(params=[0.0, 0.25], ids=["prompt", "trickling"])
def receiver(request: pytest.FixtureRequest) -> Iterator[tuple[str, float]]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    threading.Thread(target=serve, args=(listener, request.param), daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook", request.param
    listener.close()


def test_the_call_ends_by_its_deadline_however_the_answer_is_paced(receiver: tuple[str, float]) -> None:
    url, pause = receiver
    settings = Settings(webhooks_connect_timeout=1.0, webhooks_read_timeout=2.0)  # the whole call: 3 s
    target = check(url, allow_private=True)
    if not pause:
        assert post(target, b"{}", {}, settings=settings, transport=None) == 200
        return
    # Each byte comes well within the 2 s read timeout; the whole answer would take about 16 s.
    with pytest.raises(httpx.TimeoutException):
        post(target, b"{}", {}, settings=settings, transport=None)
