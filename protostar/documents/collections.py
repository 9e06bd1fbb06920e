"""All SQL on ``collections`` and ``collection_documents``: a tenant's named groups of documents.

Another tenant's collection or document is "not found", never "forbidden". Deleting a collection deletes its
memberships (ON DELETE CASCADE), never a document; deleting a document removes it from every collection.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from protostar.db.models import Collection, CollectionDocument, Document
from protostar.db.owned import owned
from protostar.db.pages import newest_first
from protostar.errors import NotFound


@dataclass(frozen=True)
class Counted:
    id: uuid.UUID
    name: str
    document_count: int
    created_at: datetime
    updated_at: datetime


def create(session: Session, *, tenant_id: uuid.UUID, name: str) -> Collection:
    row = Collection(id=uuid.uuid4(), tenant_id=tenant_id, name=name)
    session.add(row)
    session.flush()
    session.refresh(row)
    return row


def get(session: Session, *, tenant_id: uuid.UUID, collection_id: uuid.UUID) -> Collection:
    return owned(session, Collection, collection_id, tenant_id=tenant_id, name="collection")


def counted(session: Session, rows: Iterable[Collection]) -> list[Counted]:
    """``rows`` with the number of documents in each."""
    rows = list(rows)
    counts = dict(
        session.execute(
            select(CollectionDocument.collection_id, func.count())
            .where(CollectionDocument.collection_id.in_([r.id for r in rows]))
            .group_by(CollectionDocument.collection_id)
        ).all()
    )
    return [Counted(r.id, r.name, int(counts.get(r.id, 0)), r.created_at, r.updated_at) for r in rows]


def page(
    session: Session, *, tenant_id: uuid.UUID, limit: int, cursor: str | None
) -> tuple[list[Collection], str | None]:
    """Newest first; ``cursor`` continues after the last collection of the previous page."""
    stmt = select(Collection).where(Collection.tenant_id == tenant_id)
    return newest_first(session, stmt, model=Collection, limit=limit, cursor=cursor)


def rename(session: Session, *, tenant_id: uuid.UUID, collection_id: uuid.UUID, name: str) -> Collection:
    row = get(session, tenant_id=tenant_id, collection_id=collection_id)
    session.execute(update(Collection).where(Collection.id == row.id).values(name=name, updated_at=text("now()")))
    session.flush()
    session.refresh(row)
    return row


def remove(session: Session, *, tenant_id: uuid.UUID, collection_id: uuid.UUID) -> None:
    """Delete the collection and its memberships; the documents stay."""
    row = get(session, tenant_id=tenant_id, collection_id=collection_id)
    session.execute(delete(Collection).where(Collection.id == row.id))


def check_owned(session: Session, *, tenant_id: uuid.UUID, collection_ids: Iterable[uuid.UUID]) -> list[uuid.UUID]:
    """``collection_ids`` without repeats, if every one is the tenant's; else ``NotFound`` naming one that is not."""
    wanted = list(dict.fromkeys(collection_ids))
    if not wanted:
        return []
    found = set(
        session.scalars(select(Collection.id).where(Collection.tenant_id == tenant_id, Collection.id.in_(wanted)))
    )
    for collection_id in wanted:
        if collection_id not in found:
            raise NotFound(f"collection {collection_id} not found")
    return wanted


def add_documents(
    session: Session, *, tenant_id: uuid.UUID, collection_id: uuid.UUID, document_ids: Iterable[uuid.UUID]
) -> None:
    """Put the tenant's documents in the collection (those already in it stay, once); ``NotFound`` for a
    collection or document that is not the tenant's, and then nothing is added."""
    collection = get(session, tenant_id=tenant_id, collection_id=collection_id)
    wanted = list(dict.fromkeys(document_ids))
    found = set(session.scalars(select(Document.id).where(Document.tenant_id == tenant_id, Document.id.in_(wanted))))
    for document_id in wanted:
        if document_id not in found:
            raise NotFound(f"document {document_id} not found")
    if wanted:
        session.execute(
            insert(CollectionDocument)
            .values([{"collection_id": collection.id, "document_id": d} for d in wanted])
            .on_conflict_do_nothing()
        )
        touch(session, collection.id)


def remove_document(
    session: Session, *, tenant_id: uuid.UUID, collection_id: uuid.UUID, document_id: uuid.UUID
) -> None:
    """Take the document out of the collection; ``NotFound`` when it is not in it."""
    collection = get(session, tenant_id=tenant_id, collection_id=collection_id)
    removed = session.execute(
        delete(CollectionDocument)
        .where(CollectionDocument.collection_id == collection.id, CollectionDocument.document_id == document_id)
        .returning(CollectionDocument.document_id)
    ).first()
    if removed is None:
        raise NotFound(f"document {document_id} is not in collection {collection_id}")
    touch(session, collection.id)


def documents_page(
    session: Session, *, tenant_id: uuid.UUID, collection_id: uuid.UUID, limit: int, cursor: str | None
) -> tuple[list[Document], str | None]:
    """The collection's documents, newest first."""
    collection = get(session, tenant_id=tenant_id, collection_id=collection_id)
    members = select(CollectionDocument.document_id).where(CollectionDocument.collection_id == collection.id)
    stmt = select(Document).where(Document.tenant_id == tenant_id, Document.id.in_(members))
    return newest_first(session, stmt, model=Document, limit=limit, cursor=cursor)


def of_document(session: Session, *, document_id: uuid.UUID) -> list[uuid.UUID]:
    """The collections the document is in, oldest membership first."""
    stmt = (
        select(CollectionDocument.collection_id)
        .where(CollectionDocument.document_id == document_id)
        .order_by(CollectionDocument.created_at, CollectionDocument.collection_id)
    )
    return list(session.scalars(stmt))


def touch(session: Session, collection_id: uuid.UUID) -> None:
    session.execute(update(Collection).where(Collection.id == collection_id).values(updated_at=text("now()")))
