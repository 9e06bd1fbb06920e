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
from protostar.errors import InputRejected, NotFound
from protostar.jobs.turns import Around
from protostar.summary.repo import Latest


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


# The user's message and its answer's job in one statement (a ``jobs.turns.Around``): the tenant's session, the
# job (``protostar_submit_job``, called laterally from the session's row), then, once the job is admitted, the
# message and the session's ``updated_at``. No session (another tenant's, or deleted): no row, nothing written.
# The session's row is locked before the tenant's turn (in the function), as when the message was written first.
_ASK = """
WITH s AS MATERIALIZED (
    SELECT id, tenant_id, collection_ids FROM sessions
    WHERE id = CAST({session} AS uuid) AND tenant_id = CAST({tenant} AS uuid)
    FOR NO KEY UPDATE
),
j AS MATERIALIZED (SELECT f.* FROM s CROSS JOIN LATERAL {submit} f),
m AS (
    INSERT INTO messages (id, session_id, tenant_id, role, content, status, job_id)
    SELECT CAST({message} AS uuid), s.id, s.tenant_id, 'user', CAST({content} AS text), {status}, CAST({id} AS uuid)
    FROM s CROSS JOIN j WHERE j.admitted
),
u AS (UPDATE sessions SET updated_at = now() FROM j WHERE sessions.id = CAST({session} AS uuid) AND j.admitted)
SELECT admitted, sent, in_flight, queued, created_at FROM j
"""
# The job's payload: the session's collections join it when the caller named none (``{bind}``).
_ASK_PAYLOAD = (
    "CASE WHEN {bind} AND cardinality(s.collection_ids) > 0"
    " THEN CAST({payload} AS jsonb) || jsonb_build_object('collection_ids', to_jsonb(s.collection_ids))"
    " ELSE CAST({payload} AS jsonb) END"
)


def asking(*, tenant_id: uuid.UUID, session_id: uuid.UUID, message_id: uuid.UUID, content: str, bind: bool) -> Around:
    """The statement around a chat job's submit that adds the user's message ``message_id`` to the tenant's
    session with it (:data:`_ASK`); ``bind``: the job retrieves from the session's collections."""
    return Around(
        sql=_ASK,
        values={
            "session": session_id,
            "message": message_id,
            "content": content,
            "status": MessageStatus.COMPLETE.value,
            "bind": bind,
        },
        missing=NotFound(f"session {session_id} not found"),
        payload_sql=_ASK_PAYLOAD,
    )


def remove_message(conn: Connection, *, message_id: uuid.UUID) -> None:
    conn.execute(delete(Message).where(Message.id == message_id))


@dataclass(frozen=True)
class Question:
    id: uuid.UUID
    session_id: uuid.UUID
    content: str
    seq: int


@dataclass(frozen=True)
class Context:
    """What an answer starts from (:func:`context`)."""

    question: Question
    summary: Latest | None  # the session's latest summary older than the question
    history: list[Turn]  # the turns after that summary, before the question, oldest first
    searchable: bool  # the tenant has chunks embedded by the model (else retrieval is skipped)


# The question, its session's latest summary older than it, the turns between the two (newest ``limit``) and
# whether the tenant has chunks to search: one statement, so an answer's start costs one round trip.
_CONTEXT = text(
    """
WITH q AS MATERIALIZED (
    SELECT id, session_id, content, seq FROM messages
    WHERE id = :message AND tenant_id = :tenant AND role = 'user'
),
s AS MATERIALIZED (
    SELECT su.version, su.covers_seq, su.content, su.tokens_before, su.tokens_after
    FROM summaries su JOIN q ON su.session_id = q.session_id AND su.covers_seq < q.seq
    ORDER BY su.covers_seq DESC LIMIT 1
),
h AS MATERIALIZED (
    SELECT m.seq, m.role, m.content
    FROM messages m JOIN q ON m.session_id = q.session_id AND m.seq < q.seq
    WHERE m.content <> '' AND m.seq > coalesce((SELECT covers_seq FROM s), -1)
    ORDER BY m.seq DESC LIMIT :limit
)
SELECT q.id, q.session_id, q.content, q.seq,
       s.version, s.covers_seq, s.content, s.tokens_before, s.tokens_after,
       (SELECT coalesce(json_agg(json_build_array(h.role, h.content) ORDER BY h.seq), '[]'::json) FROM h),
       EXISTS (SELECT 1 FROM chunks WHERE tenant_id = :tenant AND embedding_model = :model)
FROM q LEFT JOIN s ON true
"""
)


def context(conn: Connection, *, tenant_id: uuid.UUID, message_id: uuid.UUID, limit: int, model: str) -> Context | None:
    """What answering the user's message ``message_id`` needs, read in one statement (up to ``limit`` turns of
    history; ``model``: the embedding model retrieval would search); ``None`` when the message is gone (its
    session was deleted)."""
    params = {"message": message_id, "tenant": tenant_id, "limit": max(limit, 0), "model": model}
    row = conn.execute(_CONTEXT, params).first()
    if row is None:
        return None
    summary = Latest(*row[4:9]) if row[4] is not None else None
    history = [Turn(role, content) for role, content in row[9]]
    return Context(Question(*row[0:4]), summary, history, bool(row[10]))


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
