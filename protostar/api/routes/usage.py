"""Usage: the caller's tenant's jobs, ingestion, tokens and searches per UTC day, and its stored bytes now."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from protostar.api.deps import PrincipalDep, SessionDep
from protostar.errors import ValidationFailed
from protostar.jobs import usage

router = APIRouter(prefix="/v1", tags=["usage"])

DEFAULT_DAYS = 30
MAX_DAYS = 366


class JobCounts(BaseModel):
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0


class UsageFigures(BaseModel):
    jobs: dict[str, JobCounts] = Field(
        default_factory=dict, description="jobs that ended, by kind (ingest, chat, …) and outcome"
    )
    searches: int = Field(0, description="POST /v1/search requests")
    pages: int = Field(0, description="pages of the documents ingested")
    chunks: int = Field(0, description="chunks stored by ingestion")
    embedding_tokens: int = Field(0, description="tokens embedded: chunks, chat questions and search queries")
    prompt_tokens: int = Field(0, description="LLM prompt tokens of chat answers and summaries")
    completion_tokens: int = Field(0, description="LLM completion tokens of chat answers and summaries")

    def add(self, kind: str, counts: usage.Figures) -> None:
        if kind != usage.SEARCH:
            jobs = self.jobs.setdefault(kind, JobCounts())
            jobs.succeeded += counts.succeeded
            jobs.failed += counts.failed
            jobs.cancelled += counts.cancelled
        self.searches += counts.searches
        self.pages += counts.pages
        self.chunks += counts.chunks
        self.embedding_tokens += counts.embedding_tokens
        self.prompt_tokens += counts.prompt_tokens
        self.completion_tokens += counts.completion_tokens


class UsageDay(UsageFigures):
    day: date


class StorageOut(BaseModel):
    documents: int = Field(description="documents stored now")
    bytes: int = Field(description="their size in bytes, as uploaded")


class UsageOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    first: date = Field(serialization_alias="from", description="the first UTC day counted")
    last: date = Field(serialization_alias="to", description="the last UTC day counted (included)")
    days: list[UsageDay] = Field(description="the days with any usage, oldest first")
    totals: UsageFigures
    storage: StorageOut = Field(description="now, not per day: a gauge read from the tenant's documents")


def date_range(first: date | None, last: date | None, *, today: date) -> tuple[date, date]:
    """The days asked for: by default the last 30 (today included); ``ValidationFailed`` for a range that ends
    before it starts or spans more than 366 days."""
    last = last or (today if first is None else max(first, today))
    first = first or date.fromordinal(max(last.toordinal() - (DEFAULT_DAYS - 1), 1))
    if first > last:
        raise ValidationFailed("from must not be after to")
    if (last - first).days + 1 > MAX_DAYS:
        raise ValidationFailed(f"a range may span at most {MAX_DAYS} days")
    return first, last


@router.get("/usage", response_model=UsageOut, response_model_by_alias=True)
def get_usage(
    principal: PrincipalDep,
    session: SessionDep,
    first: Annotated[date | None, Query(alias="from", description="YYYY-MM-DD (UTC); default: to less 29 days")] = None,
    last: Annotated[date | None, Query(alias="to", description="YYYY-MM-DD, UTC, included; default: today")] = None,
) -> UsageOut:
    """Your tenant's usage per UTC day from ``from`` to ``to`` (at most 366 days; by default the last 30), with
    totals, and the bytes your documents take now. A job counts once, on the day and with the outcome of its
    latest ending (a retried job moves from ``failed`` to its new outcome)."""
    first, last = date_range(first, last, today=datetime.now(UTC).date())
    conn = session.connection()
    days: dict[date, UsageDay] = {}
    totals = UsageFigures()
    for row in usage.rows(conn, tenant_id=principal.tenant_id, first=first, last=last):
        days.setdefault(row.day, UsageDay(day=row.day)).add(row.kind, row.counts)
        totals.add(row.kind, row.counts)
    stored = usage.storage(conn, tenant_id=principal.tenant_id)
    return UsageOut(
        first=first,
        last=last,
        days=list(days.values()),
        totals=totals,
        storage=StorageOut(documents=stored.documents, bytes=stored.bytes),
    )
