"""A webhook receiver for the tests: a small ``http.server`` in a thread that checks every signature, as a
tenant's receiver would, and can be taken down (its port closed) and brought back on the same port."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from protostar.runtime.process import free_port
from protostar.webhooks.sign import verify


@dataclass(frozen=True)
class Received:
    delivery_id: str
    event: str
    body: dict[str, Any]
    signed: bool  # the signature verified with the endpoint's secret


@dataclass
class Receiver:
    port: int = field(default_factory=free_port)
    secret: str = ""
    answer: int = 200  # the status every request gets
    got: list[Received] = field(default_factory=list)  # requests answered 2xx
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                signed = verify(receiver.secret, self.headers.get("Protostar-Signature", ""), raw)
                status = receiver.answer
                if 200 <= status < 300:
                    with receiver._lock:
                        receiver.got.append(
                            Received(
                                self.headers.get("Protostar-Delivery", ""),
                                self.headers.get("Protostar-Event", ""),
                                json.loads(raw),
                                signed,
                            )
                        )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Take it down: the port is closed, a connection is refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.got)

    def of_job(self, job_id: str, event: str) -> list[Received]:
        return [r for r in self.received() if r.event == event and r.body["data"].get("job", {}).get("id") == job_id]
