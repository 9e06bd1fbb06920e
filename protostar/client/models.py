"""Typed results. Each keeps the API's JSON as ``raw`` (for ``--json`` output and fields added later)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

T = TypeVar("T")

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class Progress:
    stage: str | None
    done: int
    total: int | None


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    status: str
    progress: Progress
    result: dict[str, Any] | None
    error_code: str | None
    error_message: str | None
    attempts: int
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def of(cls, data: dict[str, Any]) -> Job:
        progress = data.get("progress") or {}
        error = data.get("error") or {}
        return cls(
            id=str(data["id"]),
            kind=str(data.get("kind", "")),
            status=str(data["status"]),
            progress=Progress(progress.get("stage"), int(progress.get("done") or 0), progress.get("total")),
            result=data.get("result"),
            error_code=error.get("code"),
            error_message=error.get("message"),
            attempts=int(data.get("attempts") or 0),
            created_at=_time(data.get("created_at")),
            started_at=_time(data.get("started_at")),
            finished_at=_time(data.get("finished_at")),
            raw=data,
        )


@dataclass(frozen=True)
class Accepted:
    """A job the API queued: ``202 {"job_id", "status", "events_url"}``."""

    job_id: str
    status: str
    events_url: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def of(cls, data: dict[str, Any]) -> Accepted:
        return cls(str(data["job_id"]), str(data.get("status", "queued")), data.get("events_url"), data)


@dataclass(frozen=True)
class Document:
    id: str
    filename: str
    content_type: str
    size: int
    sha256: str
    status: str
    chunk_count: int
    page_count: int | None
    error: str | None
    metadata: dict[str, Any]
    job_id: str | None
    created_at: datetime | None
    summary: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def of(cls, data: dict[str, Any]) -> Document:
        summary = data.get("summary")
        return cls(
            id=str(data["id"]),
            filename=str(data["filename"]),
            content_type=str(data.get("content_type", "")),
            size=int(data.get("size") or 0),
            sha256=str(data.get("sha256", "")),
            status=str(data["status"]),
            chunk_count=int(data.get("chunk_count") or 0),
            page_count=data.get("page_count"),
            error=data.get("error"),
            metadata=dict(data.get("metadata") or {}),
            job_id=_str(data.get("job_id")),
            created_at=_time(data.get("created_at")),
            summary=summary.get("content") if isinstance(summary, dict) else None,
            raw=data,
        )


@dataclass(frozen=True)
class Upload:
    """The answer to an upload; with ``wait=True``, ``document`` and ``job`` are as the ingest left them."""

    document: Document
    job_id: str | None
    duplicate: bool
    job: Job | None = None

    @property
    def ok(self) -> bool:
        return self.document.status == "ready"


@dataclass(frozen=True)
class Hit:
    document_id: str
    chunk_id: int
    text: str
    score: float
    page: int | None
    filename: str
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def of(cls, data: dict[str, Any]) -> Hit:
        return cls(
            document_id=str(data["document_id"]),
            chunk_id=int(data["chunk_id"]),
            text=str(data.get("text", "")),
            score=float(data.get("score") or 0.0),
            page=data.get("page"),
            filename=str(data.get("filename", "")),
            raw=data,
        )


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True)
class Message:
    id: str
    role: str
    content: str
    status: str
    job_id: str | None
    sources: list[dict[str, Any]]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def of(cls, data: dict[str, Any]) -> Message:
        return cls(
            id=str(data["id"]),
            role=str(data["role"]),
            content=str(data.get("content", "")),
            status=str(data.get("status", "")),
            job_id=_str(data.get("job_id")),
            sources=list(data.get("sources") or []),
            raw=data,
        )


@dataclass(frozen=True)
class Session:
    id: str
    title: str | None
    messages: list[Message]
    summary: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def of(cls, data: dict[str, Any]) -> Session:
        messages = [Message.of(m) for m in data.get("messages") or []]
        return cls(str(data["id"]), data.get("title"), messages, data.get("summary"), data)


@dataclass(frozen=True)
class MessageAccepted:
    job_id: str
    message_id: str
    events_url: str | None

    @classmethod
    def of(cls, data: dict[str, Any]) -> MessageAccepted:
        return cls(str(data["job_id"]), str(data["message_id"]), data.get("events_url"))


@dataclass(frozen=True)
class Source:
    """One source of a chat answer: ``n`` is its number in the prompt (``[1]``, ``[2]``...)."""

    document_id: str
    chunk_id: int
    score: float
    n: int | None
    filename: str | None = None
    page: int | None = None
    page_kind: str | None = None  # "page", "slide" or "sheet"
    ordinal: int | None = None  # the chunk's position in its document
    text: str | None = None  # the chunk's whole text
    cited: bool | None = None  # whether the answer cites [n]; None before the answer is written (older servers)

    @classmethod
    def of(cls, data: dict[str, Any]) -> Source:
        return cls(
            str(data["document_id"]),
            int(data["chunk_id"]),
            float(data.get("score") or 0.0),
            data.get("n"),
            filename=data.get("filename"),
            page=data.get("page"),
            page_kind=data.get("page_kind"),
            ordinal=data.get("ordinal"),
            text=data.get("text"),
            cited=data.get("cited"),
        )


@dataclass(frozen=True)
class Answer:
    """A chat job's result."""

    job_id: str
    message_id: str
    text: str
    sources: list[Source]
    usage: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def of(cls, job: Job) -> Answer:
        result = job.result or {}
        return cls(
            job_id=job.id,
            message_id=str(result.get("message_id", "")),
            text=str(result.get("answer", "")),
            sources=[Source.of(s) for s in result.get("sources") or []],
            usage=dict(result.get("usage") or {}),
            raw=result,
        )


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event of a job: ``status``, ``progress``, ``sources`` (a chat answer's, before its first
    token), ``token``, ``error`` or ``done``."""

    id: str
    type: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Reset:
    """In a chat stream: the answer starts over (the job was redelivered); drop the text shown so far."""

    attempt: int


@dataclass(frozen=True)
class Collection:
    id: str
    name: str
    document_count: int
    created_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def of(cls, data: dict[str, Any]) -> Collection:
        return cls(
            id=str(data["id"]),
            name=str(data.get("name", "")),
            document_count=int(data.get("document_count") or 0),
            created_at=_time(data.get("created_at")),
            raw=data,
        )
