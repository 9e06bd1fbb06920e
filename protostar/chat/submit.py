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
from protostar.jobs.repo import autocommit


@dataclass(frozen=True)
class Asked:
    job_id: uuid.UUID
    message_id: uuid.UUID


def ask(
    dispatcher: Dispatcher,
    *,
    tenant_id: uuid.UUID,
    session_id: uuid.UUID,
    content: str,
    collection_ids: list[uuid.UUID] | None = None,
    filter: dict[str, Any] | None = None,
) -> Asked:
    """Add the user's message to the tenant's session and queue its answer on the chat queue, committed together
    in one statement (``chat.repo.asking``; ``NotFound`` when the session is not the tenant's). The answer
    retrieves from ``collection_ids`` (checked to be the tenant's by the caller; ``[]``: all its documents),
    else (``None``) from the session's own, and only from documents matching ``filter``: both go in the job's
    payload, so a retry answers alike."""
    job_id, message_id = uuid.uuid4(), uuid.uuid4()
    payload: dict[str, Any] = {"session_id": str(session_id), "message_id": str(message_id)}
    if collection_ids:
        payload["collection_ids"] = [str(c) for c in collection_ids]
    if filter:
        payload["filter"] = filter
    around = repo.asking(
        tenant_id=tenant_id, session_id=session_id, message_id=message_id, content=content, bind=collection_ids is None
    )
    try:
        dispatcher.submit(None, kind=JobKind.CHAT, tenant_id=tenant_id, payload=payload, job_id=job_id, around=around)
    except BrokerUnavailable:
        # Nothing was queued (the job row says so), so the message is not kept either: the caller sends it again.
        with autocommit(dispatcher.engine) as conn:
            repo.remove_message(conn, message_id=message_id)
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
