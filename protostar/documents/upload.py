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

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from protostar.constants import DocumentStatus, JobKind, Queue
from protostar.db.models import Document
from protostar.documents import repo
from protostar.documents.again import Reason, ingest_again
from protostar.documents.sniff import sniff
from protostar.errors import BrokerUnavailable, PayloadTooLarge, TooManyRequests, ValidationFailed
from protostar.jobs.dispatch import Dispatcher
from protostar.storage import Bucket

logger = logging.getLogger(__name__)

READ_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class Uploaded:
    document: Document
    created: bool  # False: the same content was already here
    requeued: bool = False  # its last ingest ended without success, and uploading it again queued a new one


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
    bucket: Bucket,
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
        if existing.status == DocumentStatus.FAILED:
            # Its ingest failed, expired or was cancelled: try again (the failure may have been ours).
            again = ingest_again(
                session,
                dispatcher=dispatcher,
                document_id=existing.id,
                reason=Reason.UPLOAD,
                kind=sniff(file, filename).kind,
                only_if=lambda d: d.status == DocumentStatus.FAILED,  # not when another upload won
            )
            if again is not None:
                return Uploaded(again, created=False, requeued=True)
            existing = repo.by_sha256(session, tenant_id=tenant_id, sha256=sha256) or existing
        return Uploaded(existing, created=False)
    kind = sniff(file, filename)
    # Over the tenant's queued-jobs quota: refused before anything is stored (the submit asks again under its
    # lock; losing that race leaves only the object, which the same bytes uploaded later write again).
    dispatcher.check_quota(session, tenant_id=tenant_id, queue=Queue.INGEST)
    key = object_key(tenant_id, sha256)
    bucket.put(key, file, size, content_type=kind.content_type, metadata={"sha256": sha256})
    document_id, job_id = uuid.uuid4(), uuid.uuid4()
    document = Document(
        id=document_id,
        tenant_id=tenant_id,
        filename=filename[:512],
        content_type=kind.content_type,
        size=size,
        sha256=sha256,
        object_key=key,
        chunk_count=0,
        metadata_={**metadata, "kind": kind.kind} if "kind" not in metadata else metadata,
        job_id=job_id,
    )
    repo.add(session, document)
    try:
        _submit(session, dispatcher, tenant_id=tenant_id, document_id=document_id, kind=kind.kind, job_id=job_id)
    except IntegrityError:
        # The same content arrived concurrently and its row won: answer with that one.
        session.rollback()
        winner = repo.by_sha256(session, tenant_id=tenant_id, sha256=sha256)
        assert winner is not None
        return Uploaded(winner, created=False)
    except TooManyRequests:
        session.rollback()  # the document row goes with the job that was refused
        raise
    except BrokerUnavailable:
        # Nothing was queued, so nothing is kept: the caller retries the upload.
        repo.remove(session, document_id=document_id)
        session.commit()
        raise
    session.refresh(document)  # its status, read from the job just queued
    logger.info("document_id=%s job_id=%s uploaded kind=%s size=%d", document_id, job_id, kind.kind, size)
    return Uploaded(document, created=True)


def _submit(
    session: Session,
    dispatcher: Dispatcher,
    *,
    tenant_id: uuid.UUID,
    document_id: uuid.UUID,
    kind: str,
    job_id: uuid.UUID,
) -> None:
    dispatcher.submit(
        session,
        kind=JobKind.INGEST,
        tenant_id=tenant_id,
        payload={"document_id": str(document_id), "kind": kind},
        job_id=job_id,
    )
