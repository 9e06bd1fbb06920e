"""A TCP proxy in front of the live API that cuts job event streams: the connection that carries
``GET /v1/jobs/{id}/events`` is closed after ``budget`` bytes of its answer (mid-event, as a network does), for
the first ``cuts`` such connections. Every other request passes through untouched."""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from urllib.parse import urlsplit


class CuttingProxy:
    def __init__(self, upstream_url: str, *, budget: int, cuts: int) -> None:
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.budget = budget
        self.cuts_left = cuts
        self.cut = 0  # connections cut so far
        self.event_requests = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> CuttingProxy:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._closed = True
        self._server.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                downstream, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            state = {"events": False, "sent": 0}
            threading.Thread(target=self._requests, args=(downstream, upstream, state), daemon=True).start()
            threading.Thread(target=self._answers, args=(upstream, downstream, state), daemon=True).start()

    def _requests(self, downstream: socket.socket, upstream: socket.socket, state: dict[str, int | bool]) -> None:
        try:
            while data := downstream.recv(65536):
                if b"/events" in data:
                    with self._lock:
                        self.event_requests += 1
                    state["events"], state["sent"] = True, 0
                upstream.sendall(data)
        except OSError:
            pass
        _close(downstream, upstream)

    def _answers(self, upstream: socket.socket, downstream: socket.socket, state: dict[str, int | bool]) -> None:
        try:
            while data := upstream.recv(65536):
                if state["events"] and self._take(len(data), state):
                    downstream.sendall(data[: self.budget - int(state["sent"])])
                    break
                state["sent"] = int(state["sent"]) + len(data)
                downstream.sendall(data)
        except OSError:
            pass
        _close(downstream, upstream)

    def _take(self, size: int, state: dict[str, int | bool]) -> bool:
        """Whether these bytes reach the budget and this connection is one to cut."""
        if int(state["sent"]) + size < self.budget:
            return False
        with self._lock:
            if self.cuts_left <= 0:
                return False
            self.cuts_left -= 1
            self.cut += 1
            return True


def _close(*sockets: socket.socket) -> None:
    for s in sockets:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()
