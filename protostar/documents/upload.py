"""Upload: size and type checks, one object per content, then the rows and the ingest task.

The object key is derived from the tenant and the content hash, so the same bytes are stored once and a
retried or concurrent upload of the same file rewrites the same object.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any, BinaryIO

from minio import Minio
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from protostar.constants import JobKind, Queue, TaskName
from protostar.db.models import Document
from protostar.documents import repo
from protostar.errors import BrokerUnavailable, PayloadTooLarge, ValidationFailed
from protostar.ingest.sniff import sniff
from protostar.jobs.dispatch import Dispatcher

logger = logging.getLogger(__name__)

READ_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class Uploaded:
    document: Document
    created: bool  # False: the same content was already here
    requeued: bool = False  # it had failed, and uploading it again queued a new ingest


def object_key(tenant_id: uuid.UUID, sha256: str) -> str:
    return f"tenants/{tenant_id}/sha256/{sha256}"


def measure(file: BinaryIO, *, limit: int) -> tuple[int, str]:
    """Size and SHA-256 of ``file``, refusing past ``limit`` bytes; the position is put back."""
    digest, size = hashlib.sha256(), 0
    file.seek(0)
    while block := file.read(READ_BLOCK):
        size += len(block)
        if size > limit:
            raise PayloadTooLarge(f"the file is larger than the limit of {limit} bytes")
        digest.update(block)
    file.seek(0)
    if size == 0:
        raise ValidationFailed("the file is empty")
    return size, digest.hexdigest()


def upload(
    session: Session,
    *,
    minio: Minio,
    bucket: str,
    dispatcher: Dispatcher,
    tenant_id: uuid.UUID,
    file: BinaryIO,
    filename: str,
    metadata: dict[str, Any],
    limit: int,
) -> Uploaded:
    size, sha256 = measure(file, limit=limit)
    existing = repo.by_sha256(session, tenant_id=tenant_id, sha256=sha256)
    if existing is not None:
        if existing.status == repo.DocumentStatus.FAILED:
            return _ingest_again(session, existing, dispatcher=dispatcher, kind=sniff(file, filename).kind)
        return Uploaded(existing, created=False)
    kind = sniff(file, filename)
    key = object_key(tenant_id, sha256)
    minio.put_object(bucket, key, file, size, content_type=kind.content_type, metadata={"sha256": sha256})
    document_id, job_id = uuid.uuid4(), uuid.uuid4()
    session.add(
        Document(
            id=document_id,
            tenant_id=tenant_id,
            filename=filename[:512],
            content_type=kind.content_type,
            size=size,
            sha256=sha256,
            object_key=key,
            status=repo.DocumentStatus.QUEUED,
            chunk_count=0,
            metadata_={**metadata, "kind": kind.kind} if "kind" not in metadata else metadata,
            job_id=job_id,
        )
    )
    try:
        dispatcher.submit(
            session,
            tenant_id=tenant_id,
            kind=JobKind.INGEST.value,
            task_name=TaskName.INGEST.value,
            queue=Queue.INGEST.value,
            payload={"document_id": str(document_id), "kind": kind.kind},
            job_id=job_id,
        )
    except IntegrityError:
        # The same content arrived concurrently and its row won: answer with that one.
        session.rollback()
        winner = repo.by_sha256(session, tenant_id=tenant_id, sha256=sha256)
        assert winner is not None
        return Uploaded(winner, created=False)
    except BrokerUnavailable:
        # Nothing was queued, so nothing is kept: the caller retries the upload.
        session.query(Document).filter(Document.id == document_id).delete()
        session.commit()
        raise
    document = session.get(Document, document_id)
    assert document is not None
    logger.info("document_id=%s job_id=%s uploaded kind=%s size=%d", document_id, job_id, kind.kind, size)
    return Uploaded(document, created=True)


def _ingest_again(session: Session, document: Document, *, dispatcher: Dispatcher, kind: str) -> Uploaded:
    """The same content was uploaded before and failed: try again (the failure may have been ours)."""
    locked = session.get(Document, document.id, with_for_update=True, populate_existing=True)
    if locked is None or locked.status != repo.DocumentStatus.FAILED:  # deleted, or another upload won
        session.rollback()
        return Uploaded(locked or document, created=False)
    job_id = uuid.uuid4()
    locked.status, locked.error, locked.job_id = repo.DocumentStatus.QUEUED, None, job_id
    try:
        dispatcher.submit(
            session,
            tenant_id=locked.tenant_id,
            kind=JobKind.INGEST.value,
            task_name=TaskName.INGEST.value,
            queue=Queue.INGEST.value,
            payload={"document_id": str(locked.id), "kind": kind},
            job_id=job_id,
        )
    except BrokerUnavailable as exc:
        repo.set_status(dispatcher.engine, document_id=locked.id, status=repo.DocumentStatus.FAILED, error=exc.message)
        raise
    session.refresh(locked)
    logger.info("document_id=%s job_id=%s queued again after a failure", locked.id, job_id)
    return Uploaded(locked, created=False, requeued=True)
