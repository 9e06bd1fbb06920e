"""Tables. A ``jobs`` row is the truth for every job; the Celery task id equals the job id."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    case,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _now() -> Any:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = _now()


class ApiKey(Base):
    """API keys are random 256-bit secrets, so a SHA-256 of the key is a safe, fast lookup hash."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    created_at: Mapped[datetime] = _now()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_tenant_created", "tenant_id", "created_at"),
        Index(
            "ix_jobs_open",
            "status",
            "queue",
            "dispatched_at",
            postgresql_where=text("status IN ('queued', 'running')"),
        ),
        # Each tenant's open jobs per queue, oldest first: fair turns count and pick from it (jobs.turns).
        Index(
            "ix_jobs_tenant_open",
            "tenant_id",
            "queue",
            "created_at",
            postgresql_where=text("status IN ('queued', 'running')"),
        ),
        # Counting a tenant's jobs in flight reads at most its cap of rows, taking the next waiting ones reads
        # only those, however long its backlog (migration 0015).
        Index(
            "ix_jobs_in_flight",
            "tenant_id",
            "queue",
            postgresql_where=text("status = 'running' OR (status = 'queued' AND dispatched_at IS NOT NULL)"),
        ),
        Index(
            "ix_jobs_waiting",
            "tenant_id",
            "queue",
            "created_at",
            postgresql_where=text("status = 'queued' AND dispatched_at IS NULL"),
        ),
        # At most one summary job in flight per session and per document: a second submit is refused here,
        # so concurrent triggers (two chat answers, beat, the API) can never queue two.
        Index(
            "uq_jobs_summary_session_in_flight",
            text("(payload->>'session_id')"),
            unique=True,
            postgresql_where=text("kind = 'summary_session' AND status IN ('queued', 'running')"),
        ),
        Index(
            "uq_jobs_summary_document_in_flight",
            text("(payload->>'document_id')"),
            unique=True,
            postgresql_where=text("kind = 'summary_document' AND status IN ('queued', 'running')"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    task_name: Mapped[str] = mapped_column(String(128))
    queue: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default=text("'{}'"))
    status: Mapped[str] = mapped_column(String(16), default="queued", server_default="queued")
    stage: Mapped[str | None] = mapped_column(String(32))
    progress_done: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    progress_total: Mapped[int | None] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    worker: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = _now()
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Document(Base):
    """An uploaded file. Unique per tenant by content (sha256): the same bytes uploaded twice are one document."""

    __tablename__ = "documents"
    __table_args__ = (
        Index("uq_documents_tenant_sha256", "tenant_id", "sha256", unique=True),
        Index("ix_documents_tenant_created", "tenant_id", "created_at", "id"),
        # Metadata filters (``documents.filters``): ``@>`` for equality and ``$in``, ``?`` for ``$exists``.
        # The default ``jsonb_ops`` class, not ``jsonb_path_ops``: only it answers ``?`` (key exists).
        Index("ix_documents_metadata", "metadata", postgresql_using="gin"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(512))
    content_type: Mapped[str] = mapped_column(String(128))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    object_key: Mapped[str] = mapped_column(String(512))
    chunk_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    page_count: Mapped[int | None] = mapped_column(Integer)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict, server_default=text("'{}'"))
    job_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    # The model of its chunks' vectors (set with them): another than the configured one means embed again.
    embedding_model: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    # Not stored: the status and error of the document's latest ingest job (``job_id``), the one truth.
    status: Mapped[str] = column_property(
        select(
            case(
                (Job.status == "running", "processing"),
                (Job.status == "succeeded", "ready"),
                (Job.status.in_(("failed", "cancelled")), "failed"),
                else_="queued",
            )
        )
        .where(Job.id == job_id)
        .correlate_except(Job)
        .scalar_subquery()
    )
    error: Mapped[str | None] = column_property(
        select(case((Job.status.in_(("failed", "cancelled")), Job.error_message), else_=None))
        .where(Job.id == job_id)
        .correlate_except(Job)
        .scalar_subquery()
    )


class Chunk(Base):
    """A piece of a document with its embedding. ``embedding`` has no fixed dimension so that a second
    embedding model can coexist; each model gets its own partial HNSW index on ``embedding::vector(dim)``
    and searches filter on ``embedding_model``, so vectors of two models are never compared."""

    __tablename__ = "chunks"
    __table_args__ = (Index("uq_chunks_document_ordinal", "document_id", "ordinal", unique=True),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    document_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), index=True)
    ordinal: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    page: Mapped[int | None] = mapped_column(Integer)
    element_types: Mapped[list[str]] = mapped_column(ARRAY(String(32)), default=list)
    token_count: Mapped[int] = mapped_column(Integer, default=0)
    embedding_model: Mapped[str] = mapped_column(String(128))
    embedding: Mapped[Any] = mapped_column(Vector())


class IngestPart(Base):
    """One part of a sharded ingest (``protostar.ingest.shard``): a page range to parse or a run of chunks to
    embed, claimed for a lease by whichever ingest child takes it, and its result once done. Keyed by job, phase
    and part (not attempt): a part's result depends only on the document and the plan, so a redelivered job
    keeps the parts already done. Deleted with the job's end; cascades with the job."""

    __tablename__ = "ingest_parts"

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    phase: Mapped[str] = mapped_column(String(16), primary_key=True)
    part: Mapped[int] = mapped_column(Integer, primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONB)
    holder: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    done: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    size: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    result: Mapped[bytes | None] = mapped_column(LargeBinary)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)


class ChatSession(Base):
    """A conversation. Its messages are ordered by ``messages.seq``."""

    __tablename__ = "sessions"
    __table_args__ = (Index("ix_sessions_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    title: Mapped[str | None] = mapped_column(String(200))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict, server_default=text("'{}'"))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    # Beat's summary tries since the last success, and when it may try again (backoff, see summary.submit).
    summary_tries: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    summary_retry_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The collections its messages retrieve from unless a message names its own (empty: all documents).
    collection_ids: Mapped[list[uuid.UUID]] = mapped_column(
        ARRAY(UUID(as_uuid=True)), default=list, server_default=text("'{}'")
    )


class Message(Base):
    """A user's message, or the assistant's answer to one (``reply_to``; at most one answer per message, so a
    redelivered chat job rewrites its answer instead of adding a second). ``status``: ``complete``, or
    ``partial`` when generation was cancelled or failed after some tokens."""

    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_session_seq", "session_id", "seq"),
        Index("uq_messages_reply_to", "reply_to", unique=True),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    seq: Mapped[int] = mapped_column(BigInteger, Identity())
    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="complete", server_default="complete")
    reply_to: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    job_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    sources: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list, server_default=text("'[]'"))
    usage: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default=text("'{}'"))
    created_at: Mapped[datetime] = _now()


class Summary(Base):
    """A version of a session's rolling summary: everything up to message ``covers_seq`` folded into
    ``content``. Unique per (session, covers_seq), so a redelivered summary job never writes a second one for
    the same range; the latest is the one with the highest ``covers_seq``. ``tokens_before`` estimates the
    whole history it replaces (cumulative over versions), ``tokens_after`` the summary itself."""

    __tablename__ = "summaries"
    __table_args__ = (Index("uq_summaries_session_covers", "session_id", "covers_seq", unique=True),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    version: Mapped[int] = mapped_column(Integer)
    covers_seq: Mapped[int] = mapped_column(BigInteger)
    content: Mapped[str] = mapped_column(Text)
    tokens_before: Mapped[int] = mapped_column(Integer)
    tokens_after: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[datetime] = _now()


class DocumentSummary(Base):
    """The summary of a whole document (map-reduce over its chunks); one per document, replaced by a re-run."""

    __tablename__ = "document_summaries"

    document_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    content: Mapped[str] = mapped_column(Text)
    chunk_count: Mapped[int] = mapped_column(Integer)
    tokens_before: Mapped[int] = mapped_column(Integer)
    tokens_after: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[datetime] = _now()


class Collection(Base):
    """A named group of a tenant's documents. Deleting one removes only the membership, never a document."""

    __tablename__ = "collections"
    __table_args__ = (Index("ix_collections_tenant_created", "tenant_id", "created_at", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class CollectionDocument(Base):
    """Membership (many-to-many). The primary key serves "the documents of these collections" (search's
    scope); the index on ``document_id`` serves "a document's collections" and its deletion."""

    __tablename__ = "collection_documents"
    __table_args__ = (Index("ix_collection_documents_document", "document_id"),)

    collection_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True)
    document_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[datetime] = _now()


class WebhookEndpoint(Base):
    """A tenant's webhook receiver. ``secret`` signs every delivery (HMAC-SHA256), so it is kept as given, not
    hashed; it is shown once, in the answer that created it, and never logged."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(ARRAY(String(32)))
    secret: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(String(200))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()


class WebhookDelivery(Base):
    """One event for one endpoint: the outbox row written in the transaction that ended the job
    (``jobs.outbox``), then the delivery's state and log. ``payload`` is the body, fixed at the event, so every
    attempt sends the same bytes; attempts are guarded by ``attempts`` (as a job's by its attempt number)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_endpoint_created", "endpoint_id", "created_at"),
        Index("ix_webhook_deliveries_job", "job_id", postgresql_where=text("status = 'pending'")),
        Index("ix_webhook_deliveries_pending", "next_attempt_at", postgresql_where=text("status = 'pending'")),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    event_type: Mapped[str] = mapped_column(String(32))
    job_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = _now()
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()


def _counter() -> Mapped[int]:
    return mapped_column(BigInteger, default=0, server_default="0")


class UsageDaily(Base):
    """Usage of a tenant on a UTC day, per job kind (``search`` for searches, which have no job): added to in
    the transaction that ends each job (``jobs.usage``), so it always agrees with the jobs table."""

    __tablename__ = "usage_daily"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    succeeded: Mapped[int] = _counter()
    failed: Mapped[int] = _counter()
    cancelled: Mapped[int] = _counter()
    searches: Mapped[int] = _counter()
    pages: Mapped[int] = _counter()
    chunks: Mapped[int] = _counter()
    embedding_tokens: Mapped[int] = _counter()
    prompt_tokens: Mapped[int] = _counter()
    completion_tokens: Mapped[int] = _counter()
