"""Limits before work: the key is checked before any byte of the body is read, and the body is counted as it
streams in, so no caller (with a key or without) can make the API hold more than a limit.

A pure ASGI middleware, outside FastAPI's body parsing (which reads the whole body before any dependency
runs). It answers nothing itself, so that routing, the error handlers and the request metrics see every request:

* ``/v1/*``: the key is resolved first. The principal, or why there is none, is left in the request's state
  for ``deps.get_principal``; without one the route is handed an empty body, so FastAPI's parsing finds nothing
  to read and the dependency answers ``401`` (before any validation), and the connection is closed rather
  than drained.
* every request: a declared ``Content-Length`` over the route's limit fails the first read with
  :class:`BodyTooLarge` (``413``); otherwise the ``http.request`` messages are counted and the read that passes
  the limit fails, so at most the limit plus one message (uvicorn's read buffer, 64 KiB) is ever held or
  spooled. The limit is ``PROTOSTAR_MAX_BODY_BYTES``, and ``PROTOSTAR_MAX_UPLOAD_BYTES`` plus the multipart
  framing for ``POST /v1/documents``. A ``413`` closes the connection.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from protostar.api.state import AppState

MULTIPART_SLACK = 64 * 1024
"""Form boundaries and part headers around an uploaded file."""

UPLOAD_PATH = "/v1/documents"


class BodyTooLarge(HTTPException):
    """Raised by the counting ``receive`` (FastAPI passes an ``HTTPException`` from it through unchanged)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes")


def body_limit(state: AppState, scope: Scope) -> int:
    settings = state.settings
    if scope["method"] == "POST" and scope["path"].rstrip("/") == UPLOAD_PATH:
        return settings.max_upload_bytes + MULTIPART_SLACK
    return settings.max_body_bytes


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _authorization(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return str(value.decode("latin-1"))
    return ""


class Guard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: AppState = scope["app"].state.protostar
        if scope["path"].startswith("/v1/"):
            request_state = scope.setdefault("state", {})
            try:
                request_state[PRINCIPAL] = await state.resolve(_authorization(scope))
            except Exception as exc:  # noqa: BLE001 (raised again by deps.get_principal, where the handlers render it)
                request_state[AUTH_ERROR] = exc
                await self.app(scope, _empty_body, _closing(send, always=True))
                return
        limit = body_limit(state, scope)
        declared = _declared_length(scope)
        await self.app(
            scope, _counting(receive, limit, refuse=declared is not None and declared > limit), _closing(send)
        )


PRINCIPAL = "principal"
AUTH_ERROR = "auth_error"


async def _empty_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _counting(receive: Receive, limit: int, *, refuse: bool) -> Receive:
    received = 0

    async def counted() -> Message:
        nonlocal received
        if refuse:
            raise BodyTooLarge(limit)
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
        return message

    return counted


def _closing(send: Send, *, always: bool = False) -> Send:
    """Close the connection after a response that left the body unread, rather than drain what the client sends."""

    async def closing(message: Message) -> None:
        if message["type"] == "http.response.start" and (always or message["status"] == 413):
            message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
        await send(message)

    return closing
