"""Chat sessions: create, list, read with their messages (whole or by pages), delete, and post a message (which
queues its answer)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from protostar.api.deps import PrincipalDep, SessionDep, StateDep, in_one_hop
from protostar.api.routes.jobs import accepted, events_url
from protostar.api.schemas import (
    QUOTA,
    Accepted,
    MessageAccepted,
    MessageIn,
    MessageOut,
    MessagePage,
    SessionCreated,
    SessionIn,
    SessionItem,
    SessionOut,
    SessionPage,
)
from protostar.api.scope import scope_of
from protostar.chat import repo
from protostar.chat.delete import delete_session
from protostar.chat.submit import ask
from protostar.constants import JobKind
from protostar.documents import collections
from protostar.summary import repo as summary_repo
from protostar.summary import submit

router = APIRouter(prefix="/v1", tags=["chat"])


@router.post("/sessions", status_code=201, response_model=SessionCreated)
def create_session(principal: PrincipalDep, session: SessionDep, body: SessionIn | None = None) -> SessionCreated:
    """A new session; ``collection_ids`` (yours: ``404`` otherwise) binds it: its messages retrieve only from
    documents in those collections unless a message names its own."""
    body = body or SessionIn()
    bound = collections.check_owned(session, tenant_id=principal.tenant_id, collection_ids=body.collection_ids or [])
    row = repo.create_session(
        session, tenant_id=principal.tenant_id, title=body.title, metadata=body.metadata, collection_ids=bound
    )
    session.commit()
    return SessionCreated(session_id=row.id)


@router.get("/sessions", response_model=SessionPage)
def list_sessions(
    principal: PrincipalDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> SessionPage:
    """Your sessions (without their messages), newest first. Pass ``next_cursor`` back as ``cursor``."""
    rows, next_cursor = repo.page_sessions(session, tenant_id=principal.tenant_id, limit=limit, cursor=cursor)
    return SessionPage(items=[SessionItem.of(s) for s in rows], next_cursor=next_cursor)


@router.delete("/sessions/{session_id}", status_code=204)
def remove_session(session_id: uuid.UUID, principal: PrincipalDep, session: SessionDep, state: StateDep) -> Response:
    """Cancels its queued or running answers and summaries, then removes it with its messages and summaries."""
    delete_session(session, dispatcher=state.clients.dispatcher, tenant_id=principal.tenant_id, session_id=session_id)
    return Response(status_code=204)


@router.get("/sessions/{session_id}/messages", response_model=MessagePage)
def list_messages(
    session_id: uuid.UUID,
    principal: PrincipalDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> MessagePage:
    """The session's messages, latest first (a chat shows its end, then older pages as the reader scrolls up):
    pass ``next_cursor`` back as ``cursor`` for the messages before this page. Answers carry their sources."""
    chat = repo.get_session(session, tenant_id=principal.tenant_id, session_id=session_id)
    rows, next_cursor = repo.page_messages(session, session_id=chat.id, limit=limit, cursor=cursor)
    return MessagePage(items=[MessageOut.of(m) for m in rows], next_cursor=next_cursor)


@router.get("/sessions/{session_id}", response_model=SessionOut)
def get_session(session_id: uuid.UUID, principal: PrincipalDep, session: SessionDep) -> SessionOut:
    row = repo.get_session(session, tenant_id=principal.tenant_id, session_id=session_id)
    summary = summary_repo.latest(session, session_id=row.id)
    return SessionOut.of(row, repo.messages(session, session_id=row.id), summary.content if summary else None)


@router.post("/sessions/{session_id}/summarize", status_code=202, response_model=Accepted, responses=QUOTA)
async def summarize_session(
    request: Request, session_id: uuid.UUID, principal: PrincipalDep, state: StateDep
) -> Accepted:
    """Queue a summary of the session now; when one is queued or running already, that job is the answer."""

    def work(session: Session) -> Accepted:
        chat = repo.get_session(session, tenant_id=principal.tenant_id, session_id=session_id)
        submitted = submit.submit(
            session,
            dispatcher=state.clients.dispatcher,
            kind=JobKind.SUMMARY_SESSION,
            tenant_id=principal.tenant_id,
            target_id=chat.id,
        )
        return accepted(state, submitted.job)

    return await in_one_hop(request, state, work)


@router.post("/sessions/{session_id}/messages", status_code=202, response_model=MessageAccepted, responses=QUOTA)
async def post_message(
    request: Request, session_id: uuid.UUID, body: MessageIn, principal: PrincipalDep, state: StateDep
) -> MessageAccepted:
    """Add the user's message and queue the answer; follow ``events_url`` for its tokens as they arrive. The
    answer retrieves from ``collection_ids`` (yours; ``[]``: all your documents) when given, else from the
    session's collections, and only from documents matching ``filter``."""

    def work(session: Session) -> MessageAccepted:
        scope = scope_of(session, tenant_id=principal.tenant_id, collection_ids=body.collection_ids, filter=body.filter)
        session.commit()  # its connection back to the pool (it checked the collections): ask takes its own
        asked = ask(
            state.clients.dispatcher,
            tenant_id=principal.tenant_id,
            session_id=session_id,
            content=body.content,
            collection_ids=list(scope.collection_ids) if body.collection_ids is not None else None,
            filter=body.filter,
        )
        return MessageAccepted(
            job_id=asked.job_id, message_id=asked.message_id, events_url=events_url(state, asked.job_id)
        )

    return await in_one_hop(request, state, work)
