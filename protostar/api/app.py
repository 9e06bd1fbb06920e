"""The FastAPI application: ``uvicorn protostar.api.app:create_app --factory``."""

from __future__ import annotations

import logging
import resource
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
from protostar.api.metrics import BacklogCollector, RequestMetrics, UsageCollector
from protostar.api.routes import admin, collections, completions, documents, health, jobs, sessions, usage, webhooks
from protostar.api.schemas import ADMIN_ERRORS, ERRORS
from protostar.api.state import AppState
from protostar.db.engine import ping, settle_heap
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
    settle_heap()  # the model's objects too


OPEN_FILES_WANTED = 4096  # sockets for 1,000+ event streams, with room for everything else


def raise_open_files(wanted: int = OPEN_FILES_WANTED) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards its hard limit (each open stream is a socket); the
    soft limit in force. A default soft limit of 1024 would refuse connections well before 1,000 streams."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = hard if hard == resource.RLIM_INFINITY else min(hard, max(wanted, soft))
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-files limit from %d: %s", soft, exc)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        logger.warning("open-files limit %d: fewer than about %d event streams fit", soft, soft - 100)
    return soft


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
        raise_open_files()
        state = AppState.build(settings)
        await state.start_streams()
        await to_thread.run_sync(ensure_configured_index, settings)  # searches need the model's index
        registry.register(BacklogCollector(state.clients.redis, state.clients.engine))
        registry.register(UsageCollector(state.clients.engine, cap=settings.usage_metrics_tenants))
        state.monitor = _monitor(state)
        state.metrics = registry
        app.state.protostar = state
        settle_heap()  # what startup built, out of the collector's full walks (bench.dispatch: healthz -15 % CPU)
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
    app.include_router(collections.router, responses=ERRORS)
    app.include_router(completions.router, responses=ERRORS)
    app.include_router(webhooks.router, responses=ERRORS)
    app.include_router(usage.router, responses=ERRORS)
    return app
