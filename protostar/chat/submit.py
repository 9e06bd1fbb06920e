"""Asking a question: the user's message and its answer's job, committed together, then sent; or a conversation
the caller holds itself (``POST /v1/chat/completions``), sent as a chat job whose payload carries it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from protostar.chat import repo
from protostar.constants import JobKind
from protostar.db.models import Job
from protostar.errors import BrokerUnavailable
from protostar.jobs.dispatch import Dispatcher


@dataclass(frozen=True)
class Asked:
    job_id: uuid.UUID
    message_id: uuid.UUID


def ask(
    session: Session,
    *,
    dispatcher: Dispatcher,
    tenant_id: uuid.UUID,
    session_id: uuid.UUID,
    content: str,
    collection_ids: list[uuid.UUID] | None = None,
    filter: dict[str, Any] | None = None,
) -> Asked:
    """Add the user's message to the tenant's session and queue its answer on the chat queue. The answer
    retrieves from ``collection_ids`` (checked to be the tenant's by the caller; ``[]``: all its documents),
    else (``None``) from the session's own,
    and only from documents matching ``filter``: both go in the job's payload, so a retry answers alike."""
    chat = repo.get_session(session, tenant_id=tenant_id, session_id=session_id)
    bound = collection_ids if collection_ids is not None else list(chat.collection_ids or [])
    payload: dict[str, Any] = {"session_id": str(chat.id), "message_id": ""}
    if bound:
        payload["collection_ids"] = [str(c) for c in bound]
    if filter:
        payload["filter"] = filter
    job_id = uuid.uuid4()
    message = repo.add_user_message(session, tenant_id=tenant_id, session_id=chat.id, content=content, job_id=job_id)
    message_id = message.id
    payload["message_id"] = str(message_id)
    try:
        dispatcher.submit(session, kind=JobKind.CHAT, tenant_id=tenant_id, payload=payload, job_id=job_id)
    except BrokerUnavailable:
        # Nothing was queued (the job row says so), so the message is not kept either: the caller sends it again.
        repo.remove_message(session, message_id=message_id)
        session.commit()
        raise
    return Asked(job_id=job_id, message_id=message_id)


def complete(
    session: Session,
    *,
    dispatcher: Dispatcher,
    tenant_id: uuid.UUID,
    messages: list[dict[str, str]],
    max_tokens: int | None = None,
    collection_ids: list[uuid.UUID] | None = None,
) -> Job:
    """Queue a chat job that answers ``messages`` (oldest first, the last the user's question) on the chat queue:
    the same workers, turns, limits and job row as a session's message, with nothing stored but the job.
    ``collection_ids``: the retrieval's collections (checked to be the tenant's by the caller)."""
    payload: dict[str, Any] = {"messages": messages}
    if max_tokens is not None:
        payload["max_tokens"] = max_tokens
    if collection_ids:
        payload["collection_ids"] = [str(c) for c in collection_ids]
    return dispatcher.submit(session, kind=JobKind.CHAT, tenant_id=tenant_id, payload=payload).job
