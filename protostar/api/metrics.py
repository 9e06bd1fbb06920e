"""Prometheus metrics of the API process: requests, and at scrape time queue depths, open jobs and usage.

Usage series are read from the ``usage_daily`` table when Prometheus scrapes (``UsageCollector``), not counted
in process: every API process answers the same exact totals, whatever process or worker did the work, and a
restart loses nothing. Their ``tenant`` label is bounded: the ``PROTOSTAR_USAGE_METRICS_TENANTS`` oldest
tenants each under its name, every other tenant added up under ``_other``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from protostar.constants import Queue
from protostar.jobs import repo, usage

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


OTHER_TENANTS = "_other"


class UsageCollector(Collector):
    """All-time usage per tenant from ``usage_daily`` and stored bytes from ``documents``, read at scrape time;
    ``cap`` tenants keep their own label (``jobs.usage.labelled_tenants``), the rest are ``_other``."""

    def __init__(self, engine: Engine, *, cap: int) -> None:
        self.engine, self.cap = engine, cap

    def collect(self) -> Iterator[Metric]:
        jobs = CounterMetricFamily(
            "protostar_usage_jobs", "Jobs ended, by tenant, kind and outcome", labels=["tenant", "kind", "outcome"]
        )
        plain = {
            name: CounterMetricFamily(f"protostar_usage_{name}", help_text, labels=["tenant"])
            for name, help_text in (
                ("searches", "Search requests"),
                ("pages", "Pages ingested"),
                ("chunks", "Chunks ingested"),
                ("embedding_tokens", "Tokens embedded: chunks, chat questions and search queries"),
            )
        }
        llm = CounterMetricFamily("protostar_usage_llm_tokens", "LLM tokens", labels=["tenant", "type"])
        stored = GaugeMetricFamily("protostar_usage_storage_bytes", "Bytes of stored documents", labels=["tenant"])
        try:
            with self.engine.connect() as conn:
                totals, sizes = usage.totals_by_tenant(conn, cap=self.cap, other=OTHER_TENANTS)
        except SQLAlchemyError as exc:
            logger.warning("metrics: usage unavailable: %s", type(exc).__name__)
            totals, sizes = [], {}
        per_tenant: dict[str, dict[str, int]] = {}
        for row in totals:
            counts = row.counts.values()
            if row.kind != usage.SEARCH:
                for outcome in usage.OUTCOMES:
                    jobs.add_metric([row.tenant, row.kind, outcome], float(counts[outcome]))
            summed = per_tenant.setdefault(row.tenant, dict.fromkeys(usage.COLUMNS, 0))
            for name, value in counts.items():
                summed[name] += value
        for tenant, counts in per_tenant.items():
            for name, family in plain.items():
                family.add_metric([tenant], float(counts[name]))
            llm.add_metric([tenant, "prompt"], float(counts["prompt_tokens"]))
            llm.add_metric([tenant, "completion"], float(counts["completion_tokens"]))
        for tenant, size in sizes.items():
            stored.add_metric([tenant], float(size))
        yield jobs
        yield from plain.values()
        yield llm
        yield stored


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
