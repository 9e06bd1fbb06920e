"""Ingest a stored document again, under the same id: the one path for every reason to (see :class:`Reason`).

The document is locked, pointed at a new ingest job of its stored file and the job is submitted, in one
transaction: its status reads ``queued``/``processing`` meanwhile, and its chunks are replaced in one transaction
when the ingest succeeds (``ingest.store.replace_chunks``), so a search finds the old set or the new, never both.
The quota rule is upload's: what a caller asks for counts against the tenant's queued-jobs quota (``429``); the
system's own re-embedding does not. A submit the broker refuses (``503``) points the document back at the ingest
it had, so a ready document stays ready.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from enum import StrEnum

from sqlalchemy import text
from sqlalchemy.orm import Session

from protostar.constants import DocumentStatus, JobKind
from protostar.db.models import Document
from protostar.documents import repo
from protostar.errors import BrokerUnavailable, Conflict, TooManyRequests
from protostar.jobs.dispatch import Dispatcher

logger = logging.getLogger(__name__)

_KIND = text("SELECT payload->>'kind' FROM jobs WHERE id = :id")
IN_FLIGHT = (DocumentStatus.QUEUED, DocumentStatus.PROCESSING)


class Reason(StrEnum):
    """Why a document is ingested again; the job's payload carries it as ``reason``."""

    UPLOAD = "upload"  # the same file uploaded again after its ingest ended without success
    REEMBED = "reembed"  # beat: its chunks are of another embedding model than the configured one
    REINGEST = "reingest"  # the caller asked (``POST /v1/documents/{id}/reingest``)


def _any(document: Document) -> bool:
    return True


def ingest_again(
    session: Session,
    *,
    dispatcher: Dispatcher,
    document_id: uuid.UUID,
    reason: Reason,
    kind: str | None = None,
    only_if: Callable[[Document], bool] = _any,
) -> Document | None:
    """Queue a new ingest of the document, and answer it (its new job, status read from it); ``None`` when it
    is gone or no longer passes ``only_if`` (read under the row's lock: another request may have acted first).

    ``kind`` is the parser's document kind, by default the one its last ingest used. ``Conflict`` when an ingest
    of it is queued or running already. Commits."""
    document = repo.locked(session, document_id=document_id)
    if document is None or not only_if(document):
        session.rollback()
        return None
    if document.status in IN_FLIGHT:
        session.rollback()
        raise Conflict(f"document {document_id} is being ingested already ({document.status}); follow that job")
    previous = document.job_id
    if kind is None:
        kind = _last_kind(session, previous) or str(document.metadata_.get("kind", ""))
    job_id = uuid.uuid4()
    repo.set_job(session, document_id=document.id, job_id=job_id)
    try:
        dispatcher.submit(
            session,
            kind=JobKind.INGEST,
            tenant_id=document.tenant_id,
            payload={"document_id": str(document.id), "kind": kind, "reason": reason.value},
            job_id=job_id,
            quota=reason != Reason.REEMBED,
        )
    except BrokerUnavailable:  # not queued: the document keeps the ingest it had (ready stays ready)
        session.rollback()
        if previous is not None:
            repo.set_job(session, document_id=document.id, job_id=previous)
            session.commit()
        raise
    except TooManyRequests:  # over the tenant's quota: nothing was written
        session.rollback()
        raise
    session.refresh(document)  # its new job, and the status read from it
    logger.info("document_id=%s job_id=%s queued again: %s", document.id, job_id, reason.value)
    return document


def _last_kind(session: Session, job_id: uuid.UUID | None) -> str | None:
    if job_id is None:
        return None
    kind = session.execute(_KIND, {"id": job_id}).scalar_one_or_none()
    return str(kind) if kind else None
