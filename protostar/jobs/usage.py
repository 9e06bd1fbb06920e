"""Usage per tenant and UTC day: jobs by kind and outcome, and what they consumed; all SQL on ``usage_daily``.

A job is counted inside the transaction that ends it (``jobs.repo.finish``), from the figures its ending
records: so a redelivery (which cannot end the job twice) never counts twice, and a crash before the commit
loses the end and its count together. A retry (``jobs.repo.reopen``) takes the previous ending's counts back in
its own transaction, so every job counts once, under the outcome and the UTC day of its latest ending: the
figures equal those summed independently from the ``jobs`` table (``date(finished_at AT TIME ZONE 'UTC')``).

What a job's figures are (``figures``): an ingest job's pages, chunks and embedding tokens (the sum of its
chunks' ``token_count``); any other job's ``result.usage``: the LLM prompt and completion tokens as the LLM
reported them (chat answers, summaries) and embedding tokens (a chat question's). A job that failed or was
cancelled records no result, so it counts as a job only. Searches have no job: the API adds each one (and its
query's embedding tokens) with ``add_search``. Storage is a gauge, not a sum: read from the tenant's documents
when asked (``storage``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Connection, func, select, text
from sqlalchemy.dialects.postgresql import insert

from protostar.constants import JobKind, JobStatus
from protostar.db.models import Document, Tenant, UsageDaily
from protostar.jobs.ending import Ending

OUTCOMES = (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value)
SEARCH = "search"  # the ``kind`` of the rows that count searches (no job)


@dataclass(frozen=True)
class Figures:
    """One row's counters (every column of ``usage_daily`` but its key)."""

    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    searches: int = 0
    pages: int = 0
    chunks: int = 0
    embedding_tokens: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def negated(self) -> Figures:
        return Figures(**{f.name: -getattr(self, f.name) for f in fields(self)})

    def values(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


COLUMNS = tuple(f.name for f in fields(Figures))


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def figures(kind: str, status: str, result: dict[str, Any] | None) -> Figures:
    """What a job of ``kind`` that ended ``status`` with ``result`` counts."""
    outcome = {status: 1} if status in OUTCOMES else {}
    result = result or {}
    if kind == JobKind.INGEST.value:
        return Figures(
            **outcome,
            pages=_int(result.get("pages")),
            chunks=_int(result.get("chunks")),
            embedding_tokens=_int(result.get("embedding_tokens")),
        )
    reported = result.get("usage")  # any other kind that called the LLM reports it so (chat, summaries)
    used: dict[str, Any] = reported if isinstance(reported, dict) else {}
    return Figures(
        **outcome,
        embedding_tokens=_int(used.get("embedding_tokens")),
        prompt_tokens=_int(used.get("prompt_tokens")),
        completion_tokens=_int(used.get("completion_tokens")),
    )


def _add(conn: Connection, *, tenant_id: uuid.UUID, day: Any, kind: str, counts: Figures) -> None:
    """Add ``counts`` to the (tenant, day, kind) row, creating it: one statement, safe under concurrency."""
    stmt = insert(UsageDaily).values(tenant_id=tenant_id, day=day, kind=kind, **counts.values())
    stmt = stmt.on_conflict_do_update(
        index_elements=[UsageDaily.tenant_id, UsageDaily.day, UsageDaily.kind],
        set_={c: getattr(UsageDaily, c) + stmt.excluded[c] for c in COLUMNS},
    )
    conn.execute(stmt)


_TODAY = text("(now() AT TIME ZONE 'UTC')::date")  # the transaction's day: the one ``finished_at`` gets


def count_ending(conn: Connection, *, tenant_id: uuid.UUID, kind: str, ending: Ending) -> None:
    """In the transaction that ends the job: count its outcome and figures under today (UTC)."""
    _add(conn, tenant_id=tenant_id, day=_TODAY, kind=kind, counts=figures(kind, ending.status.value, ending.result))


def count_ending_sql(source: str, *, kind: str, ending: Ending) -> tuple[str, dict[str, Any]]:
    """:func:`count_ending` as part of one statement (``jobs.repo.finish``): an upsert of today's row for the
    tenant of the ended job named by the CTE ``source`` (no row there: nothing is counted); SQL and parameters."""
    counts = figures(kind, ending.status.value, ending.result).values()
    names = ", ".join(COLUMNS)
    added = ", ".join(f"{c} = usage_daily.{c} + EXCLUDED.{c}" for c in COLUMNS)
    sql = (
        f"INSERT INTO usage_daily (tenant_id, day, kind, {names}) "  # noqa: S608 (names and placeholders only)
        f"SELECT {source}.tenant_id, {_TODAY.text}, :u_kind, {', '.join(f':u_{c}' for c in COLUMNS)} FROM {source} "
        f"ON CONFLICT (tenant_id, day, kind) DO UPDATE SET {added}"
    )
    return sql, {"u_kind": kind, **{f"u_{c}": v for c, v in counts.items()}}


def uncount_ending(
    conn: Connection, *, tenant_id: uuid.UUID, kind: str, status: str, result: dict[str, Any] | None, ended: datetime
) -> None:
    """In the transaction that reopens a job for a retry: take its previous ending's counts back."""
    day = ended.astimezone(UTC).date()
    _add(conn, tenant_id=tenant_id, day=day, kind=kind, counts=figures(kind, status, result).negated())


def add_search(conn: Connection, *, tenant_id: uuid.UUID, embedding_tokens: int) -> None:
    """Count one search request and its query's embedding tokens under today (UTC)."""
    _add(
        conn,
        tenant_id=tenant_id,
        day=_TODAY,
        kind=SEARCH,
        counts=Figures(searches=1, embedding_tokens=embedding_tokens),
    )


# --- reading --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    day: date
    kind: str
    counts: Figures


def rows(conn: Connection, *, tenant_id: uuid.UUID, first: date, last: date) -> list[Row]:
    """The tenant's rows from ``first`` to ``last`` (UTC days, both included), by day then kind."""
    found = conn.execute(
        select(UsageDaily.day, UsageDaily.kind, *(getattr(UsageDaily, c) for c in COLUMNS))
        .where(UsageDaily.tenant_id == tenant_id, UsageDaily.day >= first, UsageDaily.day <= last)
        .order_by(UsageDaily.day, UsageDaily.kind)
    )
    return [Row(day, kind, Figures(*counts)) for day, kind, *counts in found]


@dataclass(frozen=True)
class Storage:
    documents: int
    bytes: int


def storage(conn: Connection, *, tenant_id: uuid.UUID) -> Storage:
    """The tenant's stored documents now (a gauge: deleted documents are gone from it)."""
    n, size = conn.execute(
        select(func.count(), func.coalesce(func.sum(Document.size), 0)).where(Document.tenant_id == tenant_id)
    ).one()
    return Storage(int(n), int(size))


@dataclass(frozen=True)
class TenantTotals:
    tenant: str
    kind: str
    counts: Figures


def labelled_tenants(conn: Connection, *, cap: int) -> set[uuid.UUID]:
    """The tenants that get their own metric label: the ``cap`` oldest, a set that only changes when a tenant is
    deleted or the cap is changed, so each labelled series only grows (the rest are added up as ``other``)."""
    return set(conn.execute(select(Tenant.id).order_by(Tenant.created_at, Tenant.id).limit(cap)).scalars())


def totals_by_tenant(conn: Connection, *, cap: int, other: str) -> tuple[list[TenantTotals], dict[str, int]]:
    """All-time sums per (tenant, kind) and stored bytes per tenant, tenants past ``cap`` named ``other``."""
    keep = labelled_tenants(conn, cap=cap)
    names = {
        tenant_id: name for tenant_id, name in conn.execute(select(Tenant.id, Tenant.name).where(Tenant.id.in_(keep)))
    }
    sums = [func.sum(getattr(UsageDaily, c)) for c in COLUMNS]
    merged: dict[tuple[str, str], list[int]] = {}
    for tenant_id, kind, *values in conn.execute(
        select(UsageDaily.tenant_id, UsageDaily.kind, *sums).group_by(UsageDaily.tenant_id, UsageDaily.kind)
    ):
        key = (names.get(tenant_id, other), kind)
        previous = merged.get(key, [0] * len(COLUMNS))
        merged[key] = [a + int(b or 0) for a, b in zip(previous, values, strict=True)]
    stored: dict[str, int] = {}
    for tenant_id, size in conn.execute(
        select(Document.tenant_id, func.sum(Document.size)).group_by(Document.tenant_id)
    ):
        name = names.get(tenant_id, other)
        stored[name] = stored.get(name, 0) + int(size or 0)
    totals = [TenantTotals(t, k, Figures(**dict(zip(COLUMNS, v, strict=True)))) for (t, k), v in merged.items()]
    return totals, stored
