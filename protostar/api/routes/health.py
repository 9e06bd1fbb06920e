"""Liveness, readiness (every dependency answers) and Prometheus metrics. No auth, so no internal text: a
failed readiness check names the dependency; why it failed is in the API's log."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from protostar.api.deps import StateDep
from protostar.api.schemas import Readiness
from protostar.api.state import AppState
from protostar.db.engine import ping
from protostar.runtime.llm_state import read_state

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check(name: str, probe: Callable[[], object]) -> dict[str, object]:
    started = time.perf_counter()
    try:
        probe()
    except Exception as exc:  # noqa: BLE001 (boundary: report each dependency's failure, never raise)
        logger.warning("readiness: %s is not ready: %s", name, exc)  # the cause goes to the log, not to callers
        return {"name": name, "ok": False, "error": "did not answer"}
    return {"name": name, "ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


def _checks(state: AppState) -> list[dict[str, object]]:
    return [
        _check("redis", state.clients.redis.ping),
        _check("postgres", lambda: ping(state.clients.engine)),
        _check("object_store", state.clients.bucket.ready),
    ]


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness, "description": "a check failed"}})
def readyz(state: StateDep) -> JSONResponse:
    """Ready when Redis, PostgreSQL and the object store answer. ``llm`` says where the embedded LLM is
    (``building`` with its progress while ``protostar up`` builds it...): informative only, since ingestion,
    search and jobs serve meanwhile, and chat and summary jobs wait queued for it."""
    checks = _checks(state)
    ready = all(c["ok"] for c in checks)
    body = {"status": "ready" if ready else "unavailable", "checks": checks, "llm": read_state(state.clients.redis)}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", response_class=PlainTextResponse, responses={200: {"description": "Prometheus text format"}})
def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics), media_type=CONTENT_TYPE_LATEST)
