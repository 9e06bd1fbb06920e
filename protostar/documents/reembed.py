"""Documents embedded by another model than the configured one are ingested again, a few at a time.

Search reads only the configured model's vectors (``protostar.search``), so after ``PROTOSTAR_EMBEDDING_MODEL``
changes (or its default does, in an upgrade), a document embedded before is found by no search until its chunks
are made again. Beat's ``reembed`` task does that, without anyone asking: at most ``in_flight`` such ingests are
queued or running at once (for all tenants together, so an install with many documents catches up gradually and
new uploads keep their turns), the oldest documents first. Each is the normal ingest of the stored file under the
same document id (``documents.again``, payload ``"reason": "reembed"``): the document reads ``queued`` or
``processing`` meanwhile, and its chunks are replaced in one transaction when it succeeds. It does not count
against the tenant's queued-jobs quota (it is the system's work, not the caller's), but waits for the tenant's
turn like any job. One that fails leaves the document ``failed`` with its reason, as any ingest: it is not tried
again by itself (uploading the same file again, or ``POST /v1/documents/{id}/reingest``, retries it).
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import text
from sqlalchemy.orm import Session

from protostar.constants import DocumentStatus
from protostar.documents.again import Reason, ingest_again
from protostar.errors import BrokerUnavailable
from protostar.jobs.dispatch import Dispatcher

logger = logging.getLogger(__name__)

REASON = Reason.REEMBED.value

_IN_FLIGHT = text(
    "SELECT count(*) FROM jobs WHERE kind = 'ingest' AND status IN ('queued', 'running')"
    " AND payload->>'reason' = :reason"
)
_STALE = text(
    "SELECT d.id FROM documents d JOIN jobs j ON j.id = d.job_id"
    " WHERE j.status = 'succeeded' AND d.embedding_model IS DISTINCT FROM :model"
    " ORDER BY d.created_at, d.id LIMIT :limit"
)


def reembed(session: Session, *, dispatcher: Dispatcher, model: str, in_flight: int) -> list[uuid.UUID]:
    """Queue ingests for ready documents whose chunks are of another model than ``model``, so that at most
    ``in_flight`` are queued or running; the ids of the documents queued."""
    running = session.execute(_IN_FLIGHT, {"reason": REASON}).scalar_one()
    free = in_flight - running
    if free <= 0:
        return []
    stale = list(session.execute(_STALE, {"model": model, "limit": free}).scalars())
    session.commit()
    queued = []
    for document_id in stale:
        try:
            if _again(session, dispatcher, document_id, model=model):
                queued.append(document_id)
        except BrokerUnavailable:
            break  # the document was pointed back at its ingest: the next run tries again
    if stale:
        logger.info("reembed: %d documents of another model than %s, %d queued", len(stale), model, len(queued))
    return queued


def _again(session: Session, dispatcher: Dispatcher, document_id: uuid.UUID, *, model: str) -> bool:
    document = ingest_again(
        session,
        dispatcher=dispatcher,
        document_id=document_id,
        reason=Reason.REEMBED,
        # Not when deleted or ingested again meanwhile.
        only_if=lambda d: d.status == DocumentStatus.READY and d.embedding_model != model,
    )
    return document is not None
