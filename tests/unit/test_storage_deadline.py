"""The API's object store client gives up on a store that takes a request but never answers: the upload is
answered 503 (``object_store_unavailable``) within seconds, and the request is not sent again."""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator

import pytest
import urllib3
from celery import Celery

from protostar.bundle import Clients
from protostar.jobs import faults
from protostar.settings import Settings

pytestmark = pytest.mark.timeout(60)


class Mute:
    """A server that accepts connections, reads what comes and never answers (as the store did while it
    restarted on a loaded machine)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    @staticmethod
    def _drain(conn: socket.socket) -> None:
        while True:
            try:
                if not conn.recv(65536):
                    return
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for conn in self.connections:
            conn.close()


@pytest.fixture
def mute() -> Iterator[Mute]:
    server = Mute()
    yield server
    server.close()


def clients(mute: Mute, role: str) -> Clients:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        s3_endpoint=f"127.0.0.1:{mute.port}",
        s3_access_key="k" * 16,
        s3_secret_key="s" * 32,
        dependency_timeout=1.0,
    )
    return Clients(settings=settings, celery=Celery(), role=role)  # type: ignore[arg-type]


def test_the_apis_put_to_a_mute_store_fails_as_the_store_unavailable_and_is_sent_once(mute: Mute) -> None:
    bucket = clients(mute, "api").bucket
    with pytest.raises(urllib3.exceptions.HTTPError) as raised:  # timed out (MaxRetryError after none)
        bucket.put("a/key", io.BytesIO(b"x" * 1000), 1000, content_type="text/plain", metadata={})
    assert faults.dependency(raised.value) == faults.OBJECT_STORE  # the API answers it 503
    assert len(mute.connections) == 1
