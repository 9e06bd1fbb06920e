"""Clients a worker process owns. Built on first use in the process that uses them, dropped after fork."""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import redis
from celery import Celery
from minio import Minio
from sqlalchemy import Engine

from protostar.db.engine import make_engine
from protostar.jobs.dispatch import Dispatcher
from protostar.jobs.events import EventLog
from protostar.settings import Settings, get_settings
from protostar.storage import make_minio

if TYPE_CHECKING:
    from protostar.chat.limits import LLMLimiter
    from protostar.chat.llm import ChatLLM
    from protostar.ingest.embed import Embedder

_HEAVY = threading.Lock()  # thread-pool workers: build a model once even when many threads ask at once

logger = logging.getLogger(__name__)


# A thread-pool worker keeps a database connection per thread up to this many; more threads wait for one.
MAX_THREAD_CONNECTIONS = 10


@dataclass
class Resources:
    settings: Settings
    celery: Celery
    threads: int = 0  # a thread-pool worker's concurrency (0: prefork, one task at a time per process)

    @cached_property
    def engine(self) -> Engine:
        if self.threads:
            # Kept open: with 50 chat threads, a pool of 2 (+ 2 opened and closed on demand) opened a connection
            # for most bursts of work (bench.chat). Two more for the jobs' heartbeat and cancel watchers, and
            # for the few places that hold a session while writing through the engine.
            size = min(self.threads, MAX_THREAD_CONNECTIONS) + 2
            logger.info("database pool: %d connections for %d threads", size, self.threads)
            return make_engine(self.settings, pool_size=size, max_overflow=2)
        return make_engine(self.settings, pool_size=2)

    @cached_property
    def redis(self) -> redis.Redis:
        assert self.settings.redis_url, "PROTOSTAR_REDIS_URL is set by protostar up or the environment"
        return redis.Redis.from_url(
            self.settings.redis_url, socket_connect_timeout=5, socket_timeout=10, health_check_interval=25
        )

    @cached_property
    def minio(self) -> Minio:
        return make_minio(self.settings)

    @cached_property
    def embedder(self) -> Embedder:
        from protostar.ingest.embed import make_embedder  # torch: loaded only by processes that embed

        with _HEAVY:  # the first thread builds it, the others find it built
            built: Embedder = self.__dict__.get("embedder") or make_embedder(self.settings, threads=1)
            self.__dict__["embedder"] = built
            return built

    @cached_property
    def llm(self) -> ChatLLM:
        from protostar.chat.llm import ChatLLM

        return ChatLLM.from_settings(self.settings)

    @cached_property
    def llm_limiter(self) -> LLMLimiter:
        from protostar.chat.limits import Limits, LLMLimiter

        cfg = self.settings
        limits = Limits(
            concurrency=cfg.llm_concurrency,
            tenant_concurrency=cfg.llm_tenant_concurrency,
            rpm=cfg.llm_rpm,
            tenant_rpm=cfg.llm_tenant_rpm,
            wait_timeout=cfg.llm_wait_timeout,
            lease=cfg.llm_total_timeout + 60,
        )
        return LLMLimiter(self.redis, limits)

    @cached_property
    def events(self) -> EventLog:
        return EventLog(self.redis, ttl=self.settings.events_ttl, maxlen=self.settings.events_maxlen)

    @cached_property
    def dispatcher(self) -> Dispatcher:
        return Dispatcher(celery=self.celery, engine=self.engine, events=self.events, settings=self.settings)

    @property
    def worker_name(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose(close=False)
        if "redis" in self.__dict__:
            self.redis.connection_pool.reset()
        for name in ("engine", "redis", "events", "dispatcher", "minio", "embedder", "llm", "llm_limiter"):
            self.__dict__.pop(name, None)


_current: Resources | None = None


def init(celery: Celery) -> Resources:
    global _current  # noqa: PLW0603 (one Resources per process, set when the worker starts)
    _current = Resources(settings=get_settings(), celery=celery)
    return _current


def current() -> Resources:
    assert _current is not None, "protostar.worker.app sets up resources when the worker starts"
    return _current


def after_fork() -> None:
    """A prefork child must not reuse the sockets it inherited: forget them, build anew on first use."""
    if _current is not None:
        _current.close()
