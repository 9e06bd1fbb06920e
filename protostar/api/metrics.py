"""Prometheus metrics of the API process: requests, and at scrape time queue depths and open jobs."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from protostar.constants import Queue
from protostar.jobs import repo

logger = logging.getLogger(__name__)


class BacklogCollector(Collector):
    """Queue depth from Redis and open jobs from the jobs table, read when Prometheus scrapes."""

    def __init__(self, client: redis.Redis, engine: Engine) -> None:
        self.client, self.engine = client, engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("protostar_queue_depth", "Messages waiting in a Celery queue", labels=["queue"])
        jobs = GaugeMetricFamily("protostar_jobs_open", "Jobs queued or running", labels=["kind", "status"])
        try:
            pipe = self.client.pipeline(transaction=False)
            for q in Queue:
                pipe.llen(q.value)
            for q, n in zip(Queue, pipe.execute(), strict=True):
                depth.add_metric([q.value], float(n))
            with self.engine.connect() as conn:
                for kind, status, count in repo.open_counts(conn):
                    jobs.add_metric([kind, status], float(count))
        except (redis.RedisError, OSError) as exc:
            logger.warning("metrics: backlog unavailable: %s", exc)
        yield depth
        yield jobs


class RequestMetrics:
    """Pure ASGI middleware (no per-request task or body buffering, so streaming responses pass through)."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "protostar_http_requests", "HTTP requests", ["method", "route", "status"], registry=registry
        )
        self.latency = Histogram(
            "protostar_http_request_seconds",
            "HTTP request latency until the response starts",
            ["method", "route"],
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                route = getattr(scope.get("route"), "path", "unmatched")
                self.latency.labels(scope["method"], route).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.requests.labels(scope["method"], route, str(status)).inc()
