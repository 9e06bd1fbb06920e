"""All SQL on the ``documents`` table (a document is read with its summary, from ``document_summaries``, in one
query). A document's ``status`` and ``error`` are not stored: they are its latest ingest job's (see
``db.models.Document``), so every way a job ends shows on its document."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Connection, Engine, delete, select, text, update
from sqlalchemy.orm import Session

from protostar.db.models import Document, DocumentSummary
from protostar.db.owned import owned
from protostar.db.pages import newest_first
from protostar.errors import NotFound


def get_for_tenant(session: Session, *, tenant_id: uuid.UUID, document_id: uuid.UUID) -> Document:
    return owned(session, Document, document_id, tenant_id=tenant_id, name="document")


def get_with_summary(
    session: Session, *, tenant_id: uuid.UUID, document_id: uuid.UUID
) -> tuple[Document, DocumentSummary | None]:
    """The document and its summary (``None`` until one is made)."""
    row = session.execute(
        select(Document, DocumentSummary)
        .outerjoin(DocumentSummary, DocumentSummary.document_id == Document.id)
        .where(Document.id == document_id, Document.tenant_id == tenant_id)
    ).first()
    if row is None:
        raise NotFound(f"document {document_id} not found")
    return row[0], row[1]


def by_sha256(session: Session, *, tenant_id: uuid.UUID, sha256: str) -> Document | None:
    stmt = select(Document).where(Document.tenant_id == tenant_id, Document.sha256 == sha256)
    return session.scalars(stmt).one_or_none()


def page(
    session: Session, *, tenant_id: uuid.UUID, limit: int, cursor: str | None
) -> tuple[list[Document], str | None]:
    """Newest first; ``cursor`` continues after the last document of the previous page."""
    stmt = select(Document).where(Document.tenant_id == tenant_id)
    return newest_first(session, stmt, model=Document, limit=limit, cursor=cursor)


def add(session: Session, document: Document) -> None:
    """A new document, written with the session's next flush (its ingest job's commit)."""
    session.add(document)


def set_metadata(
    session: Session, *, tenant_id: uuid.UUID, document_id: uuid.UUID, metadata: dict[str, Any]
) -> Document:
    """Replace the tenant's document's metadata; ``NotFound`` when it is not the tenant's."""
    document = get_for_tenant(session, tenant_id=tenant_id, document_id=document_id)
    session.execute(
        update(Document).where(Document.id == document.id).values(metadata_=metadata, updated_at=text("now()"))
    )
    return document


def locked(session: Session, *, document_id: uuid.UUID) -> Document | None:
    """The document, its row locked for the rest of the transaction, read afresh (status included)."""
    return session.get(Document, document_id, with_for_update=True, populate_existing=True)


def set_job(session: Session, *, document_id: uuid.UUID, job_id: uuid.UUID) -> None:
    """Point the document at a new ingest job: its status follows that job from now on."""
    session.execute(update(Document).where(Document.id == document_id).values(job_id=job_id, updated_at=text("now()")))


def remove(session: Session, *, document_id: uuid.UUID) -> None:
    """Delete the row; its chunks and summary go with it (ON DELETE CASCADE)."""
    session.execute(delete(Document).where(Document.id == document_id))


def load(engine: Engine, *, document_id: uuid.UUID) -> Document | None:
    with Session(engine, expire_on_commit=False) as session:
        return session.get(Document, document_id)


def lock_for_write(conn: Connection, *, document_id: uuid.UUID) -> bool:
    """Lock the row for an ingest's final write; False when the document was deleted meanwhile."""
    return conn.execute(select(Document.id).where(Document.id == document_id).with_for_update()).first() is not None


def mark_ingested(
    conn: Connection, *, document_id: uuid.UUID, chunk_count: int, page_count: int | None, model: str
) -> None:
    conn.execute(
        update(Document)
        .where(Document.id == document_id)
        .values(chunk_count=chunk_count, page_count=page_count, embedding_model=model, updated_at=text("now()"))
    )
