"""Documents: upload (queues ingestion, optionally into a collection), read, list, update metadata, delete,
ingest again; and hybrid search over their chunks, optionally scoped by collections and a metadata filter."""

from __future__ import annotations

import json
import logging
import uuid
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from protostar.api.deps import PrincipalDep, SessionDep, StateDep, in_one_hop, in_thread
from protostar.api.routes.jobs import accepted, events_url
from protostar.api.schemas import (
    CONFLICT,
    MAX_METADATA_BYTES,
    QUOTA,
    Accepted,
    DocumentDetail,
    DocumentOut,
    DocumentPage,
    DocumentPatch,
    HitOut,
    SearchIn,
    SearchOut,
    UploadOut,
    check_metadata,
)
from protostar.api.scope import scope_of
from protostar.api.state import AppState
from protostar.auth import Principal
from protostar.constants import DocumentStatus, JobKind, JobStatus
from protostar.documents import collections, repo
from protostar.documents.again import Reason, ingest_again
from protostar.documents.delete import delete_document
from protostar.documents.upload import upload
from protostar.embeddings.tokens import approx_tokens
from protostar.errors import Conflict, NotFound, ValidationFailed
from protostar.jobs import usage
from protostar.search import retrieve
from protostar.summary import submit

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["documents"])


@router.post(
    "/documents",
    status_code=202,
    response_model=UploadOut,
    responses={200: {"model": UploadOut, "description": "the same content was already uploaded"}, **QUOTA},
)
async def upload_document(request: Request, principal: PrincipalDep, state: StateDep) -> JSONResponse:
    """Multipart ``file``, optional ``metadata`` (a JSON object of 16 KiB at most) and optional ``collection_id``
    (one of your collections: the document is added to it; ``404`` otherwise, before anything is stored). The
    type is sniffed from the bytes. The body is counted as it streams in (``protostar.api.guard``): past
    ``PROTOSTAR_MAX_UPLOAD_BYTES`` the upload stops and answers ``413``, whether or not it declared a
    ``Content-Length``."""
    form = await request.form(max_files=1, max_fields=4, max_part_size=4 * MAX_METADATA_BYTES)
    try:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise ValidationFailed("send the document as a multipart form field named 'file'")
        metadata = _metadata(form.get("metadata"))
        collection_id = _collection_id(form.get("collection_id"))
        out, queued = await in_thread(request, partial(_store, state, principal, file, metadata, collection_id))
    finally:
        await form.close()
    return JSONResponse(out.model_dump(mode="json"), status_code=202 if queued else 200)


def _metadata(raw: Any) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    try:
        value = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError as exc:
        raise ValidationFailed(f"metadata is not valid JSON: {exc.msg}") from exc
    if not isinstance(value, dict):
        raise ValidationFailed("metadata must be a JSON object")
    try:
        return check_metadata(value)
    except ValueError as exc:
        raise ValidationFailed(str(exc)) from exc


def _collection_id(raw: Any) -> uuid.UUID | None:
    if raw is None or raw == "":
        return None
    try:
        return uuid.UUID(raw) if isinstance(raw, str) else None
    except ValueError:
        raise ValidationFailed("collection_id is not a collection id (a UUID)") from None


def _store(
    state: AppState,
    principal: Principal,
    file: UploadFile,
    metadata: dict[str, Any],
    collection_id: uuid.UUID | None,
) -> tuple[UploadOut, bool]:
    """The response, and whether this upload queued an ingest."""
    with state.sessions() as session:
        if collection_id is not None:  # before anything is stored
            collections.get(session, tenant_id=principal.tenant_id, collection_id=collection_id)
        uploaded = upload(
            session,
            bucket=state.clients.bucket,
            dispatcher=state.clients.dispatcher,
            tenant_id=principal.tenant_id,
            file=file.file,
            filename=(file.filename or "").replace("\x00", "") or "upload",
            metadata=metadata,
            limit=state.settings.max_upload_bytes,
        )
        document = uploaded.document
        queued = uploaded.created or uploaded.requeued
        if collection_id is not None:
            _into(session, principal, collection_id, document.id)
        out = UploadOut(
            document_id=document.id,
            job_id=document.job_id,
            # What this upload did: queued an ingest (a worker may have started it already: ``document`` says).
            status=DocumentStatus.QUEUED if queued else document.status,
            duplicate=not uploaded.created,
            events_url=events_url(state, document.job_id) if document.job_id else None,
            document=DocumentOut.of(document),
        )
        return out, queued


def _into(session: Session, principal: Principal, collection_id: uuid.UUID, document_id: uuid.UUID) -> None:
    collections.add_documents(
        session, tenant_id=principal.tenant_id, collection_id=collection_id, document_ids=[document_id]
    )
    session.commit()


@router.get("/documents/{document_id}", response_model=DocumentDetail)
def get_document(document_id: uuid.UUID, principal: PrincipalDep, session: SessionDep) -> DocumentDetail:
    """The document, with its latest summary once one was made and the collections it is in."""
    document, summary = repo.get_with_summary(session, tenant_id=principal.tenant_id, document_id=document_id)
    return DocumentDetail.with_summary(document, summary, collections.of_document(session, document_id=document.id))


@router.get("/documents", response_model=DocumentPage)
def list_documents(
    principal: PrincipalDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> DocumentPage:
    """Newest first. Pass ``next_cursor`` back as ``cursor`` for the next page."""
    rows, next_cursor = repo.page(session, tenant_id=principal.tenant_id, limit=limit, cursor=cursor)
    return DocumentPage(items=[DocumentOut.of(d) for d in rows], next_cursor=next_cursor)


@router.patch("/documents/{document_id}", response_model=DocumentOut)
def update_document(
    document_id: uuid.UUID, body: DocumentPatch, principal: PrincipalDep, session: SessionDep
) -> DocumentOut:
    """Replace the document's ``metadata`` (validated as at upload); searches filter on the new one at once."""
    document = repo.set_metadata(
        session, tenant_id=principal.tenant_id, document_id=document_id, metadata=body.metadata
    )
    session.commit()
    session.refresh(document)
    return DocumentOut.of(document)


@router.delete("/documents/{document_id}", status_code=204)
def remove_document(document_id: uuid.UUID, principal: PrincipalDep, session: SessionDep, state: StateDep) -> Response:
    """Removes the stored file, every chunk and the row; a running ingestion of it is cancelled."""
    delete_document(
        session,
        tenant_id=principal.tenant_id,
        document_id=document_id,
        bucket=state.clients.bucket,
        client=state.clients.redis,
        events=state.clients.events,
    )
    return Response(status_code=204)


@router.post("/documents/{document_id}/summarize", status_code=202, response_model=Accepted, responses=QUOTA)
async def summarize_document(
    request: Request, document_id: uuid.UUID, principal: PrincipalDep, state: StateDep
) -> Accepted:
    """Queue a summary of the whole document (map-reduce over its chunks); the job's result carries it."""

    def work(session: Session) -> Accepted:
        document = repo.get_for_tenant(session, tenant_id=principal.tenant_id, document_id=document_id)
        if document.status != DocumentStatus.READY:
            raise Conflict(f"document {document_id} is {document.status}; it can be summarized once it is ready")
        submitted = submit.submit(
            session,
            dispatcher=state.clients.dispatcher,
            kind=JobKind.SUMMARY_DOCUMENT,
            tenant_id=principal.tenant_id,
            target_id=document.id,
        )
        return accepted(state, submitted.job)

    return await in_one_hop(request, state, work)


@router.post(
    "/documents/{document_id}/reingest", status_code=202, response_model=Accepted, responses={**CONFLICT, **QUOTA}
)
async def reingest_document(
    request: Request, document_id: uuid.UUID, principal: PrincipalDep, state: StateDep
) -> Accepted:
    """Ingest the stored file again under the same id (after a change of embedding model or parser, or a failed
    ingest): the document reads ``queued``/``processing`` meanwhile and its chunks are replaced at once when the
    job succeeds. ``409`` while an ingest of it is queued or running; counts against the queued-jobs quota."""

    def work(session: Session) -> Accepted:
        document = repo.get_for_tenant(session, tenant_id=principal.tenant_id, document_id=document_id)
        dispatcher = state.clients.dispatcher
        again = ingest_again(session, dispatcher=dispatcher, document_id=document.id, reason=Reason.REINGEST)
        if again is None or again.job_id is None:
            raise NotFound(f"document {document_id} not found")
        return Accepted(job_id=again.job_id, status=JobStatus.QUEUED, events_url=events_url(state, again.job_id))

    return await in_one_hop(request, state, work)


@router.post("/search", response_model=SearchOut)
def search_chunks(body: SearchIn, principal: PrincipalDep, session: SessionDep, state: StateDep) -> SearchOut:
    """Hybrid retrieval (vector similarity and full text, fused by reciprocal rank) in your documents; only
    those in any of ``collection_ids`` (yours: ``404`` otherwise) and matching ``filter``, when given."""
    scope = scope_of(session, tenant_id=principal.tenant_id, collection_ids=body.collection_ids, filter=body.filter)
    session.close()  # the search reads on a connection of its own
    hits = retrieve(
        state.clients.engine,
        state.clients.embedder,
        tenant_id=principal.tenant_id,
        query=body.query,
        top_k=body.top_k,
        scope=scope,
    )
    with state.clients.engine.begin() as conn:  # counted once it answered (a failed search is not usage)
        usage.add_search(conn, tenant_id=principal.tenant_id, embedding_tokens=approx_tokens(body.query))
    return SearchOut(
        hits=[
            HitOut(
                document_id=h.document_id,
                chunk_id=h.chunk_id,
                text=h.text,
                score=h.score,
                page=h.page,
                filename=h.filename,
            )
            for h in hits
        ]
    )
