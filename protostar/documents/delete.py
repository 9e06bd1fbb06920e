"""Delete a document: its ingestion (if still going) is cancelled, then the object, its chunks and the row."""

from __future__ import annotations

import logging
import uuid

import redis
from sqlalchemy.orm import Session

from protostar.constants import JobStatus
from protostar.documents import repo
from protostar.jobs import repo as jobs_repo
from protostar.jobs.cancel import cancel
from protostar.jobs.events import EventLog
from protostar.storage import Bucket

logger = logging.getLogger(__name__)


def delete_document(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    document_id: uuid.UUID,
    bucket: Bucket,
    client: redis.Redis,
    events: EventLog,
) -> None:
    document = repo.get_for_tenant(session, tenant_id=tenant_id, document_id=document_id)
    if document.job_id is not None:
        job = jobs_repo.get(session, job_id=document.job_id)
        if job is not None and not JobStatus(job.status).terminal:
            cancel(session, tenant_id=tenant_id, job_id=job.id, client=client, events=events)
    # The object first: if the store is down this fails (503) and nothing is half-deleted. The key is the
    # content's, owned by this document alone (content is unique per tenant).
    bucket.remove(document.object_key)
    repo.remove(session, document_id=document_id)
    session.commit()
    logger.info("document_id=%s deleted", document_id)
