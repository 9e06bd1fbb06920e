"""Response and request bodies of the public contract."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from protostar.constants import JobStatus, Queue
from protostar.db.models import ChatSession, Document, DocumentSummary, Job, Message
from protostar.jobs.kinds import PROBE_QUEUES


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
    fail: str | None = Field(None, pattern="^(input|transient)$")


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

    @classmethod
    def with_summary(cls, document: Document, summary: DocumentSummary | None) -> DocumentDetail:
        return cls(
            **DocumentOut.of(document).model_dump(),
            summary=DocumentSummaryOut.of(summary) if summary is not None else None,
        )


class UploadOut(BaseModel):
    document_id: uuid.UUID
    job_id: uuid.UUID | None
    status: str
    duplicate: bool
    events_url: str | None
    document: DocumentOut


class DocumentPage(BaseModel):
    items: list[DocumentOut]
    next_cursor: str | None


class SearchIn(BaseModel):
    query: str = Field(min_length=1, max_length=4000)
    top_k: int = Field(5, ge=1, le=100)


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
    title: str | None = Field(None, max_length=200)
    metadata: dict[str, Any] = Field(default_factory=dict)


class SessionCreated(BaseModel):
    session_id: uuid.UUID


class MessageIn(BaseModel):
    content: str = Field(min_length=1, max_length=16_000)


class MessageAccepted(BaseModel):
    job_id: uuid.UUID
    message_id: uuid.UUID
    events_url: str


class SourceOut(BaseModel):
    document_id: uuid.UUID
    chunk_id: int
    score: float


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


class SessionOut(BaseModel):
    id: uuid.UUID
    title: str | None
    metadata: dict[str, Any]
    messages: list[MessageOut]
    summary: str | None = Field(None, description="the rolling summary of the conversation, once there is one")
    created_at: datetime
    updated_at: datetime

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
        )
