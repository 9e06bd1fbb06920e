"""One renderer for every error: ``{"error": {"code", "message"}}`` with the error's own status."""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException

from protostar.errors import ProtostarError
from protostar.jobs import faults

logger = logging.getLogger(__name__)

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def error_response(status: int, code: str, message: str, *, retry_after: int | None = None) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if retry_after is not None:
        headers = {"Retry-After": str(retry_after)}
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _describe(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


# A dependency that is down or frozen (``jobs.faults.dependency`` names it): 503 and "try again", never 500.
_UNAVAILABLE = {
    faults.POSTGRES: ("database_unavailable", "the database"),
    faults.REDIS: ("redis_unavailable", "the event store"),
    faults.OBJECT_STORE: ("object_store_unavailable", "the object store"),
}


def render(exc: Exception) -> JSONResponse:
    """The response for ``exc``, as the handlers below render it (for middleware, which runs outside them)."""
    if isinstance(exc, ProtostarError):
        if exc.status >= 500:
            logger.warning("%s: %s", exc.code, exc.message)
        return error_response(exc.status, exc.code, exc.message, retry_after=getattr(exc, "retry_after", None))
    if isinstance(exc, HTTPException):
        return error_response(exc.status_code, HTTP_CODES.get(exc.status_code, "error"), str(exc.detail))
    dependency = faults.dependency(exc)
    if dependency is not None:
        code, what = _UNAVAILABLE[dependency]
        logger.warning("%s unavailable: %r", dependency, exc)
        return error_response(503, code, f"{what} is unavailable; try again")
    logger.error("unhandled error", exc_info=exc)
    return error_response(500, "internal", "internal error; the details are in the server log")


def install(app: FastAPI) -> None:
    @app.exception_handler(ProtostarError)
    @app.exception_handler(HTTPException)
    @app.exception_handler(DBAPIError)
    @app.exception_handler(redis.ConnectionError)
    @app.exception_handler(redis.TimeoutError)
    async def _known(_: Request, exc: Exception) -> JSONResponse:
        return render(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "validation_failed", _describe(exc))

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        if faults.dependency(exc) is None:
            logger.error("unhandled error on %s %s", request.method, request.url.path)
        return render(exc)  # a dependency's failure (the object store refusing, say) is a 503, not a 500
