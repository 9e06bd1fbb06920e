"""Collections: a tenant's named groups of documents (create, list, read, rename, delete; add and remove
documents; list a collection's documents). Another tenant's collection is a ``404``."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from protostar.api.deps import PrincipalDep, SessionDep
from protostar.api.schemas import (
    CollectionDocumentsIn,
    CollectionIn,
    CollectionOut,
    CollectionPage,
    DocumentOut,
    DocumentPage,
)
from protostar.chat import repo as chat_repo
from protostar.documents import collections
from protostar.documents.collections import Counted

router = APIRouter(prefix="/v1", tags=["collections"])


def _out(row: Counted) -> CollectionOut:
    return CollectionOut(
        id=row.id,
        name=row.name,
        document_count=row.document_count,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _one(session: SessionDep, principal: PrincipalDep, collection_id: uuid.UUID) -> CollectionOut:
    row = collections.get(session, tenant_id=principal.tenant_id, collection_id=collection_id)
    return _out(collections.counted(session, [row])[0])


@router.post("/collections", status_code=201, response_model=CollectionOut)
def create_collection(body: CollectionIn, principal: PrincipalDep, session: SessionDep) -> CollectionOut:
    row = collections.create(session, tenant_id=principal.tenant_id, name=body.name)
    session.commit()
    return _one(session, principal, row.id)


@router.get("/collections", response_model=CollectionPage)
def list_collections(
    principal: PrincipalDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> CollectionPage:
    """Newest first, with the number of documents in each. Pass ``next_cursor`` back as ``cursor``."""
    rows, next_cursor = collections.page(session, tenant_id=principal.tenant_id, limit=limit, cursor=cursor)
    return CollectionPage(items=[_out(c) for c in collections.counted(session, rows)], next_cursor=next_cursor)


@router.get("/collections/{collection_id}", response_model=CollectionOut)
def get_collection(collection_id: uuid.UUID, principal: PrincipalDep, session: SessionDep) -> CollectionOut:
    return _one(session, principal, collection_id)


@router.patch("/collections/{collection_id}", response_model=CollectionOut)
def rename_collection(
    collection_id: uuid.UUID, body: CollectionIn, principal: PrincipalDep, session: SessionDep
) -> CollectionOut:
    """Rename it (``{"name"}``)."""
    collections.rename(session, tenant_id=principal.tenant_id, collection_id=collection_id, name=body.name)
    session.commit()
    return _one(session, principal, collection_id)


@router.delete("/collections/{collection_id}", status_code=204)
def delete_collection(collection_id: uuid.UUID, principal: PrincipalDep, session: SessionDep) -> Response:
    """Deletes the collection; its documents stay (only their membership goes), and sessions bound to it are
    bound to their other collections only (to none: all your documents)."""
    collections.remove(session, tenant_id=principal.tenant_id, collection_id=collection_id)
    chat_repo.unbind_collection(session, tenant_id=principal.tenant_id, collection_id=collection_id)
    session.commit()
    return Response(status_code=204)


@router.post("/collections/{collection_id}/documents", response_model=CollectionOut)
def add_documents(
    collection_id: uuid.UUID, body: CollectionDocumentsIn, principal: PrincipalDep, session: SessionDep
) -> CollectionOut:
    """Add your documents to it (those already in it stay, once); a document that is not yours is a ``404``
    and then none is added."""
    collections.add_documents(
        session, tenant_id=principal.tenant_id, collection_id=collection_id, document_ids=body.document_ids
    )
    session.commit()
    return _one(session, principal, collection_id)


@router.delete("/collections/{collection_id}/documents/{document_id}", status_code=204)
def remove_document(
    collection_id: uuid.UUID, document_id: uuid.UUID, principal: PrincipalDep, session: SessionDep
) -> Response:
    """Take a document out of the collection (the document stays); ``404`` when it is not in it."""
    collections.remove_document(
        session, tenant_id=principal.tenant_id, collection_id=collection_id, document_id=document_id
    )
    session.commit()
    return Response(status_code=204)


@router.get("/collections/{collection_id}/documents", response_model=DocumentPage)
def list_collection_documents(
    collection_id: uuid.UUID,
    principal: PrincipalDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> DocumentPage:
    """The collection's documents, newest first."""
    rows, next_cursor = collections.documents_page(
        session, tenant_id=principal.tenant_id, collection_id=collection_id, limit=limit, cursor=cursor
    )
    return DocumentPage(items=[DocumentOut.of(d) for d in rows], next_cursor=next_cursor)
