"""The clients a process owns, built the same way by the API (in its lifespan) and by every worker process
(after fork): the database engine, Redis, the object store's bucket, the dispatcher and event log, the LLM
and the embedder. Each is built on first use, in the process that uses it; :meth:`Clients.close` forgets them,
so a prefork child never reuses a socket it inherited.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Literal

import redis
from celery import Celery
from sqlalchemy import Engine

from protostar.db.engine import make_engine
from protostar.jobs.dispatch import Dispatcher
from protostar.jobs.events import EventLog
from protostar.settings import Settings
from protostar.storage import Bucket, make_minio

if TYPE_CHECKING:
    from protostar.embeddings.embed import Embedder
    from protostar.llm.call import LLM

logger = logging.getLogger(__name__)

Role = Literal["api", "worker"]

API_THREADS = 40  # anyio's default threadpool, which FastAPI runs sync routes and dependencies in
_API_S3_READ_TIMEOUT = 5.0  # seconds the API waits for the object store's answer (at least: see ``bucket``)
MAX_THREAD_CONNECTIONS = 10  # a thread-pool worker keeps a connection per thread up to this many

_HEAVY = threading.Lock()  # a model is built once even when many threads ask for it at once


@dataclass
class Clients:
    settings: Settings
    celery: Celery
    role: Role
    threads: int = 0  # a thread-pool worker's concurrency (0: one task at a time per process)

    @cached_property
    def engine(self) -> Engine:
        if self.role == "api":
            # A connection for each threadpool worker (where every sync route and dependency runs), kept open: a
            # smaller pool opened and closed overflow connections under load (0.17 per request, bench.dispatch).
            # Waits are bounded by the request deadline (protostar.api.deadline) rather than the pool's defaults.
            wait = self.settings.dependency_timeout
            return make_engine(self.settings, pool_size=API_THREADS, max_overflow=10, wait=wait)
        if self.threads:
            # Kept open: with 50 chat threads, a pool of 2 (+ 2 opened and closed on demand) opened a connection
            # for most bursts of work (bench.chat). Two more for the jobs' heartbeat and cancel watchers.
            size = min(self.threads, MAX_THREAD_CONNECTIONS) + 2
            logger.info("database pool: %d connections for %d threads", size, self.threads)
            return make_engine(self.settings, pool_size=size, max_overflow=2)
        return make_engine(self.settings, pool_size=2)

    @cached_property
    def redis(self) -> redis.Redis:
        url = self._redis_url()
        if self.role == "api":  # the API answers 503 quickly when Redis is down rather than hang
            timeout = self.settings.broker_connect_timeout
            return redis.Redis.from_url(
                url,
                socket_connect_timeout=timeout,
                socket_timeout=max(timeout, self.settings.dependency_timeout),
                max_connections=200,
            )
        return redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10, health_check_interval=25)

    @cached_property
    def bucket(self) -> Bucket:
        if self.role == "api":
            # An upload answers 503 within seconds when the store takes its body but does not answer (seen while
            # it restarted on a loaded machine: reads answered, so the request deadline saw it up, and the put
            # waited 10 s and more). Its answer comes once the body is stored: seconds is plenty. Not sent again
            # after such a timeout (the caller may; the same bytes are the same object).
            timeout = max(_API_S3_READ_TIMEOUT, 2 * self.settings.dependency_timeout)
            return Bucket(make_minio(self.settings, read_timeout=timeout, read_retries=0), self.settings.s3_bucket)
        return Bucket(make_minio(self.settings), self.settings.s3_bucket)

    @cached_property
    def events(self) -> EventLog:
        return EventLog(self.redis, ttl=self.settings.events_ttl, maxlen=self.settings.events_maxlen)

    @cached_property
    def dispatcher(self) -> Dispatcher:
        return Dispatcher(celery=self.celery, engine=self.engine, events=self.events, settings=self.settings)

    @cached_property
    def embedder(self) -> Embedder:
        from protostar.embeddings.embed import make_embedder  # torch: loaded only by processes that embed

        with _HEAVY:  # the first thread builds it, the others find it built
            built: Embedder = self.__dict__.get("embedder") or make_embedder(
                self.settings, threads=None if self.role == "api" else 1
            )
            self.__dict__["embedder"] = built
            return built

    @cached_property
    def llm(self) -> LLM:
        from protostar.llm.call import LLM
        from protostar.llm.limits import Limits, LLMLimiter
        from protostar.llm.stream import ChatLLM

        cfg = self.settings
        limits = Limits(
            concurrency=cfg.llm_concurrency,
            tenant_concurrency=cfg.llm_tenant_concurrency,
            rpm=cfg.llm_rpm,
            tenant_rpm=cfg.llm_tenant_rpm,
            wait_timeout=cfg.llm_wait_timeout,
            lease=cfg.llm_total_timeout + 60,
        )
        return LLM(client=ChatLLM.from_settings(cfg), limiter=LLMLimiter(self.redis, limits))

    @property
    def worker_name(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    def _redis_url(self) -> str:
        if not self.settings.redis_url:
            raise RuntimeError("PROTOSTAR_REDIS_URL is not set; start the stack with `protostar up`")
        return self.settings.redis_url

    def close(self) -> None:
        """Forget every client (a prefork child after fork), closing what this process opened itself."""
        if "engine" in self.__dict__:
            self.engine.dispose(close=False)
        if "redis" in self.__dict__:
            self.redis.connection_pool.reset()
        for name in ("engine", "redis", "events", "dispatcher", "bucket", "embedder", "llm"):
            self.__dict__.pop(name, None)

    async def aclose(self) -> None:
        """Close for good (the API's lifespan end)."""
        if "redis" in self.__dict__:
            self.redis.close()
        if "engine" in self.__dict__:
            self.engine.dispose()
