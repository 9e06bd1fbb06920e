"""Names shared by the API, the Celery config and the workers.

Import-light on purpose: the API process, ``celeryconfig`` and every worker import this module, so it must
not pull in anything heavier than the standard library.
"""

from __future__ import annotations

from enum import StrEnum


class Queue(StrEnum):
    INGEST = "ingest"
    CHAT = "chat"
    SUMMARY = "summary"
    MAINTENANCE = "maintenance"
    WEBHOOKS = "webhooks"


class TaskName(StrEnum):
    PROBE = "protostar.probe"
    INGEST = "protostar.ingest.document"
    INGEST_PART = "protostar.ingest.part"
    CHAT = "protostar.chat.answer"
    SUMMARY_SESSION = "protostar.summary.session"
    SUMMARY_DOCUMENT = "protostar.summary.document"
    RECONCILE = "protostar.maintenance.reconcile"
    RESUMMARIZE = "protostar.maintenance.resummarize"
    REEMBED = "protostar.maintenance.reembed"
    WEBHOOK_DELIVER = "protostar.webhooks.deliver"


class JobKind(StrEnum):
    PROBE = "probe"
    INGEST = "ingest"
    CHAT = "chat"
    SUMMARY_SESSION = "summary_session"
    SUMMARY_DOCUMENT = "summary_document"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class DocumentStatus(StrEnum):
    """A document's status is its latest ingest job's, read through a join (see ``documents.repo``)."""

    QUEUED = "queued"
    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"


class MessageStatus(StrEnum):
    COMPLETE = "complete"
    PARTIAL = "partial"  # generation was cancelled or broke after some tokens


class EventType(StrEnum):
    STATUS = "status"
    PROGRESS = "progress"
    TOKEN = "token"  # noqa: S105 (an event name)
    ERROR = "error"
    DONE = "done"
    SOURCES = "sources"  # a chat answer's numbered sources, before its first token


class WebhookEvent(StrEnum):
    """What a webhook endpoint may subscribe to (``ping`` is sent only on request, to any endpoint)."""

    JOB_SUCCEEDED = "job.succeeded"
    JOB_FAILED = "job.failed"
    JOB_CANCELLED = "job.cancelled"
    DOCUMENT_READY = "document.ready"
    DOCUMENT_FAILED = "document.failed"
    SUMMARY_WRITTEN = "summary.written"


PING_EVENT = "ping"


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # not delivered yet: its next attempt is due at ``next_attempt_at``
    SUCCEEDED = "succeeded"  # the receiver answered 2xx
    FAILED = "failed"  # given up: past ``PROTOSTAR_WEBHOOKS_MAX_AGE``, the endpoint answered 410 or is disabled
