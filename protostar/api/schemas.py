"""Response and request bodies of the public contract.

Every request field has a documented maximum (it shows in ``/openapi.json``; above it: ``422``): titles 200
characters, message content 16,000, search queries 4,000, metadata objects 16 KiB as compact JSON. Text may not
contain NUL characters (PostgreSQL cannot store them).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field

from protostar.auth import KeyInfo
from protostar.constants import JobStatus, Queue
from protostar.db.models import ChatSession, Document, DocumentSummary, Job, Message
from protostar.documents.filters import MAX_CLAUSES, check_filter
from protostar.jobs.kinds import PROBE_QUEUES

MAX_METADATA_BYTES = 16 * 1024
"""A metadata object (a session's, a document's), serialized as compact JSON, in bytes."""


def check_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("text may not contain NUL characters")
    return value


def check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    """``value`` if it fits :data:`MAX_METADATA_BYTES` and holds no NUL character; raises ``ValueError``."""
    try:
        encoded = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise ValueError("metadata numbers must be finite (JSON has no Infinity or NaN)") from None
    if len(encoded.encode()) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is larger than {MAX_METADATA_BYTES} bytes as JSON")
    if _has_nul(value):
        raise ValueError("metadata may not contain NUL characters")
    return value


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


Text = Annotated[str, AfterValidator(check_text)]
Metadata = Annotated[
    dict[str, Any],
    AfterValidator(check_metadata),
    Field(description=f"any JSON object up to {MAX_METADATA_BYTES} bytes as compact JSON"),
]


class ErrorDetail(BaseModel):
    code: str = Field(description="stable, machine-readable: unauthorized, not_found, validation_failed, ...")
    message: str = Field(description="for people; never internal text (addresses, SQL, exceptions)")


class ErrorOut(BaseModel):
    """Every error, whatever its status."""

    error: ErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "no key, or an unknown or revoked one"},
    404: {"model": ErrorOut, "description": "not found (or another tenant's)"},
    413: {"model": ErrorOut, "description": "the body is over its limit"},
    422: {"model": ErrorOut, "description": "malformed input; the message names the field"},
    503: {"model": ErrorOut, "description": "a dependency is down; try again"},
}
"""The error answers every ``/v1`` route documents (``ErrorOut``, as ``protostar.api.errors`` renders them)."""

ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {403: {"model": ErrorOut, "description": "not an admin key"}}
CONFLICT: dict[int | str, dict[str, Any]] = {409: {"model": ErrorOut, "description": "not in a state that allows it"}}
TOO_MANY_STREAMS: dict[int | str, dict[str, Any]] = {
    429: {
        "model": ErrorOut,
        "description": "the tenant has PROTOSTAR_TENANT_MAX_STREAMS event streams open; retry after Retry-After s",
        "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
    }
}
QUOTA: dict[int | str, dict[str, Any]] = {
    429: {
        "model": ErrorOut,
        "description": "the tenant's queued jobs on this queue reached PROTOSTAR_TENANT_MAX_QUEUED: nothing was "
        "accepted; try again after Retry-After seconds",
        "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
    }
}
"""A route that queues a job may answer this (``protostar.jobs.turns``)."""


class Check(BaseModel):
    name: str
    ok: bool
    ms: float | None = None
    error: str | None = Field(None, description="which way it failed; the cause is in the API's log")


class Readiness(BaseModel):
    status: str = Field(description="ready or unavailable")
    checks: list[Check]


class Progress(BaseModel):
    stage: str | None
    done: int
    total: int | None


class JobError(BaseModel):
    code: str
    message: str | None


class JobOut(BaseModel):
    id: uuid.UUID
    kind: str
    status: JobStatus
    progress: Progress
    result: dict[str, Any] | None
    error: JobError | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> JobOut:
        return cls(
            id=job.id,
            kind=job.kind,
            status=JobStatus(job.status),
            progress=Progress(stage=job.stage, done=job.progress_done, total=job.progress_total),
            result=job.result,
            error=JobError(code=job.error_code, message=job.error_message) if job.error_code else None,
            attempts=job.attempts,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


class Accepted(BaseModel):
    job_id: uuid.UUID
    status: JobStatus
    events_url: str


class ProbeIn(BaseModel):
    queue: Queue = Field(Queue.INGEST, description="one of " + ", ".join(q.value for q in PROBE_QUEUES))
    steps: int = Field(3, ge=1, le=10_000)
    sleep: float = Field(0.0, ge=0, le=60)
    fail: str | None = Field(
        None,
        pattern="^(input|transient|crash)$",
        description="end as a real job can: input (rejected), transient (retried), crash (its prefork child dies)",
    )


class DocumentOut(BaseModel):
    id: uuid.UUID
    filename: str
    content_type: str
    size: int
    sha256: str
    status: str
    chunk_count: int
    page_count: int | None
    error: str | None
    metadata: dict[str, Any]
    job_id: uuid.UUID | None
    created_at: datetime

    @classmethod
    def of(cls, document: Document) -> DocumentOut:
        return cls(
            id=document.id,
            filename=document.filename,
            content_type=document.content_type,
            size=document.size,
            sha256=document.sha256,
            status=document.status,
            chunk_count=document.chunk_count,
            page_count=document.page_count,
            error=document.error,
            metadata=document.metadata_,
            job_id=document.job_id,
            created_at=document.created_at,
        )


class DocumentSummaryOut(BaseModel):
    content: str
    tokens_before: int = Field(description="the document's chunks, in tokens")
    tokens_after: int = Field(description="the summary, in tokens")
    chunk_count: int = Field(description="chunks the summary was made of")
    created_at: datetime

    @classmethod
    def of(cls, summary: DocumentSummary) -> DocumentSummaryOut:
        return cls(
            content=summary.content,
            tokens_before=summary.tokens_before,
            tokens_after=summary.tokens_after,
            chunk_count=summary.chunk_count,
            created_at=summary.created_at,
        )


class DocumentDetail(DocumentOut):
    """One document, with its summary (the list leaves summaries out)."""

    summary: DocumentSummaryOut | None = Field(
        None, description="the latest summary of the whole document (POST /v1/documents/{id}/summarize), if any"
    )
    collection_ids: list[uuid.UUID] = Field(default_factory=list, description="the collections it is in")

    @classmethod
    def with_summary(
        cls, document: Document, summary: DocumentSummary | None, collection_ids: list[uuid.UUID] | None = None
    ) -> DocumentDetail:
        return cls(
            **DocumentOut.of(document).model_dump(),
            summary=DocumentSummaryOut.of(summary) if summary is not None else None,
            collection_ids=collection_ids or [],
        )


class UploadOut(BaseModel):
    document_id: uuid.UUID
    job_id: uuid.UUID | None
    status: str
    duplicate: bool
    events_url: str | None
    document: DocumentOut


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class DocumentPage(BaseModel):
    items: list[DocumentOut]
    next_cursor: str | None


MAX_COLLECTIONS = 20
"""Collections one search or chat message may name."""

Filter = Annotated[
    dict[str, Any],
    AfterValidator(check_filter),
    Field(
        description="a metadata filter: {field: value} (equals), {field: {$eq | $in | $gt | $gte | $lt | $lte | "
        f"$exists: …}}; ranges on numbers or ISO 8601 dates; top-level keys AND; at most {MAX_CLAUSES} conditions "
        '(see the README\'s "Collections and filters")',
        examples=[{"team": "legal", "year": {"$gte": 2020}, "lang": {"$in": ["en", "de"]}}],
    ),
]
CollectionIds = Annotated[
    list[uuid.UUID],
    Field(max_length=MAX_COLLECTIONS, description="only documents in any of these collections (yours)"),
]


class SearchIn(BaseModel):
    query: Text = Field(min_length=1, max_length=4000)
    top_k: int = Field(5, ge=1, le=100)
    collection_ids: CollectionIds | None = None
    filter: Filter | None = None


class HitOut(BaseModel):
    document_id: uuid.UUID
    chunk_id: int
    text: str
    score: float
    page: int | None
    filename: str


class SearchOut(BaseModel):
    hits: list[HitOut]


class SessionIn(BaseModel):
    title: Text | None = Field(None, max_length=200)
    metadata: Metadata = Field(default_factory=dict)
    collection_ids: CollectionIds | None = Field(
        None, max_length=MAX_COLLECTIONS, description="bind the session: its messages retrieve only from these"
    )


class SessionCreated(BaseModel):
    session_id: uuid.UUID


class MessageIn(BaseModel):
    content: Text = Field(min_length=1, max_length=16_000)
    collection_ids: CollectionIds | None = Field(
        None,
        max_length=MAX_COLLECTIONS,
        description="retrieve only from these ([]: from all your documents; absent: the session's binding)",
    )
    filter: Filter | None = None


class MessageAccepted(BaseModel):
    job_id: uuid.UUID
    message_id: uuid.UUID
    events_url: str


class SourceOut(BaseModel):
    """A retrieved chunk the answer could cite, as the prompt numbered it. Answers written before citations
    carried file names (issue 15) have only ``document_id``, ``chunk_id`` and ``score``."""

    n: int | None = Field(None, description="the number the prompt gave it: the answer cites it as [n]")
    document_id: uuid.UUID
    chunk_id: int
    score: float
    filename: str | None = None
    page: int | None = Field(None, description="the page, slide or sheet number (see page_kind), when the file has")
    page_kind: str | None = Field(None, description="page, slide (presentations) or sheet (spreadsheets)")
    ordinal: int | None = Field(None, description="the chunk's position in the document, from 0")
    text: str | None = Field(None, description="the chunk's whole text, as stored and searched")
    cited: bool | None = Field(None, description="whether the answer cites [n]; absent until the answer is written")


class MessageOut(BaseModel):
    id: uuid.UUID
    role: str
    content: str
    status: str
    reply_to: uuid.UUID | None
    job_id: uuid.UUID | None
    sources: list[SourceOut]
    usage: dict[str, Any]
    created_at: datetime

    @classmethod
    def of(cls, message: Message) -> MessageOut:
        return cls(
            id=message.id,
            role=message.role,
            content=message.content,
            status=message.status,
            reply_to=message.reply_to,
            job_id=message.job_id,
            sources=[SourceOut.model_validate(s) for s in message.sources],
            usage=message.usage,
            created_at=message.created_at,
        )


class SessionItem(BaseModel):
    id: uuid.UUID
    title: str | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, session: ChatSession) -> SessionItem:
        return cls(
            id=session.id,
            title=session.title,
            metadata=session.metadata_,
            created_at=session.created_at,
            updated_at=session.updated_at,
        )


class SessionPage(BaseModel):
    items: list[SessionItem]
    next_cursor: str | None


class MessagePage(BaseModel):
    items: list[MessageOut] = Field(description="latest first: reverse a page to show it top to bottom")
    next_cursor: str | None = Field(None, description="the older messages: pass it back as cursor")


class SessionOut(BaseModel):
    id: uuid.UUID
    title: str | None
    metadata: dict[str, Any]
    messages: list[MessageOut]
    summary: str | None = Field(None, description="the rolling summary of the conversation, once there is one")
    created_at: datetime
    updated_at: datetime
    collection_ids: list[uuid.UUID] = Field(default_factory=list, description="the collections it is bound to")

    @classmethod
    def of(cls, session: ChatSession, messages: list[Message], summary: str | None = None) -> SessionOut:
        return cls(
            id=session.id,
            title=session.title,
            metadata=session.metadata_,
            messages=[MessageOut.of(m) for m in messages],
            summary=summary,
            created_at=session.created_at,
            updated_at=session.updated_at,
            collection_ids=list(session.collection_ids or []),
        )


class KeyIn(BaseModel):
    admin: bool = Field(False, description="an admin key may send probes and manage its tenant's keys")


class KeyOut(BaseModel):
    id: uuid.UUID
    tenant: str
    prefix: str = Field(description="the key's first characters, to tell keys apart; never the key itself")
    admin: bool
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, key: KeyInfo) -> KeyOut:
        return cls(
            id=key.id,
            tenant=key.tenant,
            prefix=key.prefix,
            admin=key.is_admin,
            created_at=key.created_at,
            revoked_at=key.revoked_at,
        )


class KeyCreated(KeyOut):
    key: str = Field(description="the API key: shown once, never stored (only its SHA-256 is)")


class KeyList(BaseModel):
    items: list[KeyOut]


class DocumentPatch(BaseModel):
    metadata: Metadata = Field(description="replaces the document's metadata object as a whole")


class CollectionIn(BaseModel):
    name: Text = Field(min_length=1, max_length=200)


class CollectionOut(BaseModel):
    id: uuid.UUID
    name: str
    document_count: int
    created_at: datetime
    updated_at: datetime


class CollectionPage(BaseModel):
    items: list[CollectionOut]
    next_cursor: str | None


class CollectionDocumentsIn(BaseModel):
    document_ids: list[uuid.UUID] = Field(min_length=1, max_length=100, description="your documents to add")
