"""What the client raises: one small tree, each API error carrying the API's ``code``, ``message`` and ``status``.

    ClientError                       anything the client raises on purpose
    ├── TransportError                the API could not be reached or stopped answering (after retries)
    ├── APIError                      the API answered with an error: .status, .code, .message
    │   ├── AuthError                 401, 403: no key, a wrong key, or not an admin
    │   ├── NotFound                  404: no such document, job or session (for this key's tenant)
    │   │   └── NotSupported          404/405 for a route this server does not have (an older server)
    │   ├── Conflict                  409
    │   ├── InvalidRequest            400, 413, 415, 422: the request can never succeed as it is
    │   ├── RateLimited               429 (after retries of an idempotent call)
    │   └── ServerError               5xx (after retries of an idempotent call)
    ├── JobFailed                     a job the client waited on or streamed ended failed or cancelled
    └── WaitTimeout                   a job was not finished when the wait gave up

Errors are built from the API's body ``{"error": {"code", "message"}}`` by :func:`from_response`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from protostar.client.models import Job


class ClientError(Exception):
    """Base of everything the client raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TransportError(ClientError):
    """The API could not be reached, or the connection broke, and retrying did not help."""


class APIError(ClientError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def __str__(self) -> str:
        return f"{self.message} ({self.code}, HTTP {self.status})"


class AuthError(APIError):
    pass


class NotFound(APIError):
    pass


class NotSupported(NotFound):
    """The server has no such route: it is older than this client."""


class Conflict(APIError):
    pass


class InvalidRequest(APIError):
    pass


class RateLimited(APIError):
    pass


class ServerError(APIError):
    pass


class JobFailed(ClientError):
    """A job ended ``failed`` or ``cancelled``; ``code`` is the job's reason (``cancelled`` for a cancel)."""

    def __init__(self, job_id: str, status: str, code: str | None, message: str | None, job: Job | None = None) -> None:
        super().__init__(message or f"job {job_id} {status}")
        self.job_id = job_id
        self.status = status
        self.code = code or status
        self.job = job

    def __str__(self) -> str:
        return f"job {self.job_id} {self.status}: {self.message} ({self.code})"


class WaitTimeout(ClientError):
    pass


_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequest,
    401: AuthError,
    403: AuthError,
    404: NotFound,
    405: NotSupported,
    409: Conflict,
    413: InvalidRequest,
    415: InvalidRequest,
    422: InvalidRequest,
    429: RateLimited,
}

ROUTER_NOT_FOUND = "Not Found"  # the detail of the router's own 404, for a path it has no route for


def from_response(response: httpx.Response, *, route: str | None = None) -> APIError:
    """The error for an answer of 400 or more; ``route`` names the call, for a clear :class:`NotSupported`."""
    code, message = _body(response)
    status = response.status_code
    if route and (status == 405 or (status == 404 and message == ROUTER_NOT_FOUND)):
        return NotSupported(status, "not_supported", f"this server has no {route}; it is older than this client")
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else APIError)
    return cls(status, code, message)


def _body(response: httpx.Response) -> tuple[str, str]:
    try:
        body = json.loads(response.content)
        error = body["error"]
        return str(error["code"]), str(error.get("message") or error["code"])
    except (ValueError, KeyError, TypeError):
        text = response.text.strip()[:200] or response.reason_phrase
        return "http_" + str(response.status_code), text
