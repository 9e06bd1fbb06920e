"""All SQL on ``sessions`` and ``messages``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from protostar.chat.prompt import Turn
from protostar.constants import MessageStatus
from protostar.db.models import ChatSession, Message
from protostar.errors import NotFound


def create_session(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    title: str | None,
    metadata: dict[str, Any],
    collection_ids: list[uuid.UUID] | None = None,
) -> ChatSession:
    row = ChatSession(
        id=uuid.uuid4(), tenant_id=tenant_id, title=title, metadata_=metadata, collection_ids=collection_ids or []
    )
    session.add(row)
    session.flush()
    return row


def unbind_collection(session: Session, *, tenant_id: uuid.UUID, collection_id: uuid.UUID) -> None:
    """Drop a deleted collection from every session of the tenant bound to it (a session bound to nothing else
    then retrieves from all the tenant's documents, as an unbound one does)."""
    session.execute(
        update(ChatSession)
        .where(ChatSession.tenant_id == tenant_id, ChatSession.collection_ids.contains([collection_id]))
        .values(collection_ids=func.array_remove(ChatSession.collection_ids, collection_id))
    )


def get_session(session: Session, *, tenant_id: uuid.UUID, session_id: uuid.UUID) -> ChatSession:
    row = session.get(ChatSession, session_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFound(f"session {session_id} not found")
    return row


def messages(session: Session, *, session_id: uuid.UUID) -> list[Message]:
    return list(session.scalars(select(Message).where(Message.session_id == session_id).order_by(Message.seq)))


def add_user_message(
    session: Session, *, tenant_id: uuid.UUID, session_id: uuid.UUID, content: str, job_id: uuid.UUID
) -> Message:
    row = Message(
        id=uuid.uuid4(),
        session_id=session_id,
        tenant_id=tenant_id,
        role="user",
        content=content,
        status=MessageStatus.COMPLETE,
        job_id=job_id,
    )
    session.add(row)
    session.execute(update(ChatSession).where(ChatSession.id == session_id).values(updated_at=text("now()")))
    return row


def remove_message(session: Session, *, message_id: uuid.UUID) -> None:
    session.execute(delete(Message).where(Message.id == message_id))


@dataclass(frozen=True)
class Question:
    id: uuid.UUID
    session_id: uuid.UUID
    content: str
    seq: int


def question(conn: Connection, *, tenant_id: uuid.UUID, message_id: uuid.UUID) -> Question | None:
    """The user's message to answer, or ``None`` when it is gone (its session was deleted)."""
    row = conn.execute(
        select(Message.id, Message.session_id, Message.content, Message.seq).where(
            Message.id == message_id, Message.tenant_id == tenant_id, Message.role == "user"
        )
    ).first()
    return Question(row.id, row.session_id, row.content, row.seq) if row is not None else None


def history(conn: Connection, *, question: Question, limit: int, after_seq: int | None = None) -> list[Turn]:
    """Up to ``limit`` messages of the question's session before it, oldest first; only those after
    ``after_seq`` (what the session's summary covers) when given."""
    if limit <= 0:
        return []
    stmt = select(Message.role, Message.content).where(
        Message.session_id == question.session_id, Message.seq < question.seq, Message.content != ""
    )
    if after_seq is not None:
        stmt = stmt.where(Message.seq > after_seq)
    earlier = conn.execute(stmt.order_by(Message.seq.desc()).limit(limit)).all()
    return [Turn(r.role, r.content) for r in reversed(earlier)]


def answer_id(question_id: uuid.UUID) -> uuid.UUID:
    """The answer's id follows from the question's, so every delivery of a chat job writes the same row."""
    return uuid.uuid5(question_id, "answer")


def save_answer(
    conn: Connection,
    *,
    question: Question,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID,
    content: str,
    status: str,
    sources: list[dict[str, Any]],
    usage: dict[str, Any],
) -> uuid.UUID:
    """Insert the answer, or replace the one an earlier delivery wrote: one answer per question."""
    values = {
        "id": answer_id(question.id),
        "session_id": question.session_id,
        "tenant_id": tenant_id,
        "role": "assistant",
        "content": content,
        "status": status,
        "reply_to": question.id,
        "job_id": job_id,
        "sources": sources,
        "usage": usage,
    }
    statement = insert(Message).values(**values)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=[Message.reply_to],
            set_={k: statement.excluded[k] for k in ("content", "status", "job_id", "sources", "usage")},
        )
    )
    conn.execute(update(ChatSession).where(ChatSession.id == question.session_id).values(updated_at=text("now()")))
    return answer_id(question.id)
