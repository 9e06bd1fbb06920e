"""Delete a document: its ingestion (if still going) is cancelled, then the object, its chunks and the row."""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

from sqlalchemy import delete
from sqlalchemy.orm import Session

from protostar.constants import JobStatus
from protostar.db.models import Document, Job
from protostar.documents import repo
from protostar.jobs.cancel import cancel

if TYPE_CHECKING:
    from protostar.api.state import AppState

logger = logging.getLogger(__name__)


def delete_document(session: Session, *, state: AppState, tenant_id: uuid.UUID, document_id: uuid.UUID) -> None:
    document = repo.get_for_tenant(session, tenant_id=tenant_id, document_id=document_id)
    if document.job_id is not None:
        job = session.get(Job, document.job_id)
        if job is not None and not JobStatus(job.status).terminal:
            cancel(session, tenant_id=tenant_id, job_id=job.id, client=state.redis, events=state.dispatcher.events)
    # The object first: if the store is down this fails (503) and nothing is half-deleted. The key is the
    # content's, owned by this document alone (content is unique per tenant).
    state.minio.remove_object(state.settings.s3_bucket, document.object_key)
    session.execute(delete(Document).where(Document.id == document_id))  # chunks go by ON DELETE CASCADE
    session.commit()
    logger.info("document_id=%s deleted", document_id)
