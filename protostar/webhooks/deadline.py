"""A whole-call deadline for a delivery's HTTP call. httpx bounds each connect, read and write, not the call: a
receiver that trickles its answer a byte at a time, each within the read timeout, could hold a worker thread for
hours. This transport gives every socket operation of the call at most the time left before the deadline (its
own timeout, if shorter), so the call ends by then with a timeout, however the receiver paces its bytes."""

from __future__ import annotations

import ssl
import time
import typing

import httpcore
import httpx


class _Stream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream, deadline: float) -> None:
        self._stream = stream
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _left(self._deadline, timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _left(self._deadline, timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        wrapped = self._stream.start_tls(
            ssl_context, server_hostname, _left(self._deadline, timeout, httpcore.ConnectTimeout)
        )
        return _Stream(wrapped, self._deadline)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._stream.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, deadline: float) -> None:
        self._inner = httpcore.SyncBackend()
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        left = _left(self._deadline, timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.connect_tcp(host, port, left, local_address, socket_options), self._deadline)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("webhooks call TCP addresses only")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _left(deadline: float, timeout: float | None, error: type[Exception]) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the call's deadline passed")
    return left if timeout is None else min(timeout, left)


def transport(seconds: float) -> httpx.HTTPTransport:
    """An httpx transport for one call that must end within ``seconds`` (no proxy from the environment)."""
    made = httpx.HTTPTransport(trust_env=False)
    made._pool = httpcore.ConnectionPool(  # httpx takes no network backend; its pool does
        ssl_context=httpx.create_ssl_context(),
        max_connections=1,
        network_backend=_Backend(time.monotonic() + seconds),
    )
    return made
