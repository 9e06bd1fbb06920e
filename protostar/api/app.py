"""The FastAPI application: ``uvicorn protostar.api.app:create_app --factory``."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from protostar import __version__
from protostar.api import errors
from protostar.api.deadline import Deadline, Monitor
from protostar.api.guard import Guard
from protostar.api.metrics import BacklogCollector, RequestMetrics
from protostar.api.routes import admin, documents, health, jobs, sessions
from protostar.api.schemas import ADMIN_ERRORS, ERRORS
from protostar.api.state import AppState
from protostar.db.engine import ping
from protostar.embeddings.index import ensure_configured_index
from protostar.logs import setup_logging
from protostar.settings import Settings, get_settings

logger = logging.getLogger(__name__)

DESCRIPTION = """Submit work, get a job id back at once, poll the job or stream its events.

Every route but `/healthz`, `/readyz` and `/metrics` needs `Authorization: Bearer <api key>`; the key is
checked before the body is read. Request bodies are limited (`PROTOSTAR_MAX_BODY_BYTES`, 1 MiB by default;
uploads `PROTOSTAR_MAX_UPLOAD_BYTES`): a larger one answers `413` without being read."""


def _warm(state: AppState) -> None:
    try:
        state.clients.embedder.embed(["warm-up"])
    except Exception:  # boundary: a failed warm-up is retried by the first search, which reports it
        logger.exception("could not load the query embedder")


def _monitor(state: AppState) -> Monitor:
    """The dependencies the request deadline asks about before it answers 503 (``protostar.api.deadline``)."""
    clients = state.clients
    pings: dict[str, Callable[[], object]] = {
        "postgres": lambda: ping(clients.engine),
        "redis": clients.redis.ping,
        "object_store": clients.bucket.ready,
    }
    monitor = Monitor(pings, stale_after=max(state.settings.dependency_timeout / 2, 1.0))
    monitor.start()
    return monitor


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    setup_logging(settings.log_level)
    registry = CollectorRegistry()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = AppState.build(settings)
        await to_thread.run_sync(ensure_configured_index, settings)  # searches need the model's index
        registry.register(BacklogCollector(state.clients.redis, state.clients.engine))
        state.monitor = _monitor(state)
        state.metrics = registry
        app.state.protostar = state
        threading.Thread(target=_warm, args=(state,), name="warm-embedder", daemon=True).start()
        logger.info("API ready on %s", settings.public_api_url)
        try:
            yield
        finally:
            state.monitor.stop()
            await state.close()

    app = FastAPI(title="Protostar", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.add_middleware(Guard)  # the key, then the body's size, before any route reads a byte
    app.add_middleware(Deadline, timeout=settings.dependency_timeout)  # outside the guard: its key look-up too
    app.add_middleware(RequestMetrics, registry=registry)  # added last: outermost, so it counts 401s and 413s
    errors.install(app)
    app.include_router(health.router)
    app.include_router(jobs.router, responses=ERRORS)
    app.include_router(documents.router, responses=ERRORS)
    app.include_router(sessions.router, responses=ERRORS)
    app.include_router(admin.router, responses={**ERRORS, **ADMIN_ERRORS})
    return app
