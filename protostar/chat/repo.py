"""All SQL on ``sessions`` and ``messages``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from protostar.chat.prompt import Turn
from protostar.constants import JobKind, JobStatus, MessageStatus
from protostar.db.models import ChatSession, Job, Message
from protostar.db.owned import owned
from protostar.db.pages import latest_by_seq, newest_first
from protostar.errors import InputRejected


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
    return owned(session, ChatSession, session_id, tenant_id=tenant_id, name="session")


def messages(session: Session, *, session_id: uuid.UUID) -> list[Message]:
    return list(session.scalars(select(Message).where(Message.session_id == session_id).order_by(Message.seq)))


def page_sessions(
    session: Session, *, tenant_id: uuid.UUID, limit: int, cursor: str | None
) -> tuple[list[ChatSession], str | None]:
    """The tenant's sessions, newest first; ``cursor`` continues after the last one of the previous page."""
    stmt = select(ChatSession).where(ChatSession.tenant_id == tenant_id)
    return newest_first(session, stmt, model=ChatSession, limit=limit, cursor=cursor)


def page_messages(
    session: Session, *, session_id: uuid.UUID, limit: int, cursor: str | None
) -> tuple[list[Message], str | None]:
    """The session's messages, latest first (a chat opens at its end and loads older ones as it scrolls up);
    ``cursor`` continues with the messages before the previous page."""
    stmt = select(Message).where(Message.session_id == session_id)
    return latest_by_seq(session, stmt, column=Message.seq, limit=limit, cursor=cursor)


def jobs_in_flight(session: Session, *, tenant_id: uuid.UUID, session_id: uuid.UUID) -> list[uuid.UUID]:
    """The session's chat and summary jobs still queued or running."""
    stmt = select(Job.id).where(
        Job.tenant_id == tenant_id,
        Job.kind.in_((JobKind.CHAT.value, JobKind.SUMMARY_SESSION.value)),
        Job.status.in_((JobStatus.QUEUED.value, JobStatus.RUNNING.value)),
        Job.payload["session_id"].astext == str(session_id),
    )
    return list(session.scalars(stmt))


def remove_session(session: Session, *, session_id: uuid.UUID) -> None:
    """Delete the row; its messages and summaries go with it (ON DELETE CASCADE)."""
    session.execute(delete(ChatSession).where(ChatSession.id == session_id))


def session_exists(conn: Connection, *, session_id: uuid.UUID) -> bool:
    """True while the session exists, which it then keeps doing until this transaction ends (a delete waits)."""
    found = conn.execute(select(ChatSession.id).where(ChatSession.id == session_id).with_for_update(key_share=True))
    return found.first() is not None


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
    """Insert the answer, or replace the one an earlier delivery wrote: one answer per question.
    ``InputRejected`` when its session was deleted meanwhile."""
    if not session_exists(conn, session_id=question.session_id):
        raise InputRejected("the session was deleted while its answer was written")
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


def has_chunks(conn: Connection, *, tenant_id: uuid.UUID, model: str) -> bool:
    """Whether the tenant has any chunk embedded by ``model`` (what an answer could retrieve); an index probe."""
    found = conn.execute(
        text("SELECT EXISTS (SELECT 1 FROM chunks WHERE tenant_id = :tenant AND embedding_model = :model)"),
        {"tenant": tenant_id, "model": model},
    ).scalar()
    return bool(found)
