"""All SQL on ``summaries`` and ``document_summaries``, and the reads a summary needs from messages, chunks and
jobs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import Connection, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from protostar.constants import JobKind
from protostar.db.models import ChatSession, Chunk, DocumentSummary, Message, Summary


@dataclass(frozen=True)
class Latest:
    version: int
    covers_seq: int
    content: str
    tokens_before: int
    tokens_after: int


@dataclass(frozen=True)
class Line:
    seq: int
    role: str
    content: str


def latest(db: Connection | Session, *, session_id: uuid.UUID, before_seq: int | None = None) -> Latest | None:
    """The session's newest summary (only one covering messages before ``before_seq``, when given)."""
    stmt = select(
        Summary.version, Summary.covers_seq, Summary.content, Summary.tokens_before, Summary.tokens_after
    ).where(Summary.session_id == session_id)
    if before_seq is not None:
        stmt = stmt.where(Summary.covers_seq < before_seq)
    row = db.execute(stmt.order_by(Summary.covers_seq.desc()).limit(1)).first()
    return Latest(*row) if row is not None else None


def session_owner(conn: Connection, *, session_id: uuid.UUID) -> uuid.UUID | None:
    """The tenant of the session, or ``None`` when it no longer exists."""
    owner: uuid.UUID | None = conn.execute(select(ChatSession.tenant_id).where(ChatSession.id == session_id)).scalar()
    return owner


def unsummarized(conn: Connection, *, session_id: uuid.UUID, after_seq: int) -> list[Line]:
    """Messages after ``after_seq`` up to the session's latest answer: a question still waiting for its answer
    is left for the next summary, so the summary never ends on a question."""
    last_answer = (
        select(func.max(Message.seq))
        .where(Message.session_id == session_id, Message.role == "assistant")
        .scalar_subquery()
    )
    rows = conn.execute(
        select(Message.seq, Message.role, Message.content)
        .where(
            Message.session_id == session_id,
            Message.seq > after_seq,
            Message.seq <= last_answer,
            Message.content != "",
        )
        .order_by(Message.seq)
    ).all()
    return [Line(r.seq, r.role, r.content) for r in rows]


def count_after(db: Connection | Session, *, session_id: uuid.UUID) -> int:
    """How many messages of the session its latest summary does not cover."""
    covered = (
        select(func.coalesce(func.max(Summary.covers_seq), 0)).where(Summary.session_id == session_id).scalar_subquery()
    )
    stmt = select(func.count()).where(Message.session_id == session_id, Message.seq > covered, Message.content != "")
    return int(db.execute(stmt).scalar_one())


def save(
    conn: Connection,
    *,
    session_id: uuid.UUID,
    tenant_id: uuid.UUID,
    version: int,
    covers_seq: int,
    content: str,
    tokens_before: int,
    tokens_after: int,
    job_id: uuid.UUID,
) -> bool:
    """Insert a summary version; ``False`` when one for this range exists already (a redelivery), or when the
    session was deleted meanwhile (its lock, taken first, keeps it until this transaction ends)."""
    alive = conn.execute(
        select(ChatSession.id).where(ChatSession.id == session_id).with_for_update(key_share=True)
    ).first()
    if alive is None:
        return False
    statement = insert(Summary).values(
        id=uuid.uuid4(),
        session_id=session_id,
        tenant_id=tenant_id,
        version=version,
        covers_seq=covers_seq,
        content=content,
        tokens_before=tokens_before,
        tokens_after=tokens_after,
        job_id=job_id,
    )
    inserted = conn.execute(
        statement.on_conflict_do_nothing(index_elements=[Summary.session_id, Summary.covers_seq]).returning(Summary.id)
    ).first()
    conn.execute(  # a summary succeeded: beat's backoff for this session starts over
        update(ChatSession)
        .where(ChatSession.id == session_id, ChatSession.summary_tries != 0)
        .values(summary_tries=0, summary_retry_at=None)
    )
    return inserted is not None


def chunk_texts(conn: Connection, *, document_id: uuid.UUID, tenant_id: uuid.UUID) -> list[tuple[str, int]]:
    """The document's chunks in reading order, with their token counts."""
    rows = conn.execute(
        select(Chunk.text, Chunk.token_count)
        .where(Chunk.document_id == document_id, Chunk.tenant_id == tenant_id)
        .order_by(Chunk.ordinal)
    ).all()
    return [(r.text, r.token_count) for r in rows]


def save_document(
    conn: Connection,
    *,
    document_id: uuid.UUID,
    tenant_id: uuid.UUID,
    content: str,
    chunk_count: int,
    tokens_before: int,
    tokens_after: int,
    job_id: uuid.UUID,
) -> None:
    """Insert or replace the document's summary (the same chunks give the same kind of summary)."""
    values = {
        "document_id": document_id,
        "tenant_id": tenant_id,
        "content": content,
        "chunk_count": chunk_count,
        "tokens_before": tokens_before,
        "tokens_after": tokens_after,
        "job_id": job_id,
    }
    statement = insert(DocumentSummary).values(**values)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=[DocumentSummary.document_id],
            set_={
                **{k: statement.excluded[k] for k in values if k != "document_id"},
                "created_at": text("now()"),
            },
        )
    )


def stale_sessions(session: Session, *, stale_after: float, limit: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(session id, tenant id) of sessions with an answer older than ``stale_after`` seconds that no summary
    covers yet, no summary job in flight and no backoff running (``summary_retry_at``), oldest first."""
    rows = session.execute(
        text(
            """
            SELECT s.id, s.tenant_id
            FROM sessions s
            CROSS JOIN LATERAL (
                SELECT coalesce(max(covers_seq), 0) AS covered FROM summaries WHERE session_id = s.id
            ) c
            WHERE EXISTS (
                SELECT 1 FROM messages m
                WHERE m.session_id = s.id AND m.seq > c.covered AND m.role = 'assistant' AND m.content <> ''
                  AND m.created_at < now() - make_interval(secs => :stale_after)
            )
            AND NOT EXISTS (
                SELECT 1 FROM jobs j
                WHERE j.kind = :kind AND j.status IN ('queued', 'running') AND j.payload->>'session_id' = s.id::text
            )
            AND (s.summary_retry_at IS NULL OR s.summary_retry_at <= now())
            ORDER BY s.updated_at
            LIMIT :limit
            """
        ),
        {"stale_after": stale_after, "kind": JobKind.SUMMARY_SESSION.value, "limit": limit},
    ).all()
    return [(r[0], r[1]) for r in rows]


def backing_off(db: Connection | Session, *, session_id: uuid.UUID) -> bool:
    """Whether the session's next automatic summary try is still to wait (see :func:`tried`)."""
    stmt = select(func.coalesce(ChatSession.summary_retry_at > func.now(), False)).where(ChatSession.id == session_id)
    return bool(db.execute(stmt).scalar())


def tried(conn: Connection | Session, *, session_id: uuid.UUID, base: float, cap: float) -> None:
    """Beat queued a summary for the session: count the try and back off the next one, ``base * 2**tries``
    seconds capped at ``cap`` (the tries before this one; :func:`save` resets both on success)."""
    retry_in = func.least(cap, base * func.power(2, func.least(ChatSession.summary_tries, 40)))
    conn.execute(
        update(ChatSession)
        .where(ChatSession.id == session_id)
        .values(
            summary_tries=ChatSession.summary_tries + 1,
            summary_retry_at=func.now() + func.make_interval(0, 0, 0, 0, 0, 0, retry_in),
        )
    )
