"""The API's calls as data, and when to retry one: shared by :class:`Client` and :class:`AsyncClient`.

Retries: a call that never reached the server (connection refused, connect timeout) is retried whatever it
is; a call that may have reached it is retried only when it is idempotent (reads, search, cancel, delete, an
upload, which the server deduplicates by content) and the failure is worth it (a broken connection, a read
timeout, 429, 502, 503, 504). Posting a chat message or creating a session is never sent twice.
"""

from __future__ import annotations

import json
import mimetypes
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class Retry:
    """``attempts`` retries after the first try, with jittered exponential backoff capped at ``cap`` seconds."""

    attempts: int = 3
    backoff: float = 0.5
    cap: float = 8.0

    def delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        after = response.headers.get("retry-after") if response is not None else None
        if after and after.isdigit():
            return min(float(after), self.cap)
        return random.uniform(0, min(self.cap, self.backoff * 2**attempt))  # noqa: S311 (jitter)

    def next_delay(
        self, attempt: int, idempotent: bool, *, error: Exception | None = None, response: httpx.Response | None = None
    ) -> float | None:
        """Seconds to wait before retry ``attempt`` (0-based), or None to give up."""
        if attempt >= self.attempts:
            return None
        if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
            return self.delay(attempt)  # the request never reached the server
        if not idempotent:
            return None
        if isinstance(error, httpx.TransportError):
            return self.delay(attempt)
        if response is not None and response.status_code in RETRY_STATUSES:
            return self.delay(attempt, response)
        return None


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    idempotent: bool
    json: Any = None
    params: dict[str, Any] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    data: dict[str, str] | None = None
    route: str | None = None  # set for routes an older server may lack: its 404/405 becomes NotSupported
    timeout: float | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def request_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"params": self.params, "headers": self.headers}
        if self.json is not None:
            kwargs["json"] = self.json
        if self.files is not None:
            kwargs["files"] = self.files
            kwargs["data"] = self.data
        if self.timeout is not None:
            kwargs["timeout"] = self.timeout
        return kwargs


def describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def transport_message(call: Call, base_url: str, error: Exception) -> str:
    return f"{call.method} {base_url}{call.path} failed: {describe(error)}"


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def upload(
    source: str | Path | bytes,
    *,
    filename: str | None,
    metadata: dict[str, Any] | None,
    timeout: float,
    collection_id: str | None = None,
) -> Call:
    if isinstance(source, bytes):
        body, name = source, filename or "upload"
    else:
        path = Path(source)
        body, name = path.read_bytes(), filename or path.name
    kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
    data = {"metadata": json.dumps(metadata)} if metadata else {}
    if collection_id:
        data["collection_id"] = collection_id
    return Call("POST", "/v1/documents", True, files={"file": (name, body, kind)}, data=data or None, timeout=timeout)


def get_document(document_id: str) -> Call:
    return Call("GET", f"/v1/documents/{document_id}", True)


def list_documents(limit: int, cursor: str | None) -> Call:
    return Call("GET", "/v1/documents", True, params=_params(limit=limit, cursor=cursor))


def delete_document(document_id: str) -> Call:
    return Call("DELETE", f"/v1/documents/{document_id}", True)


def summarize_document(document_id: str) -> Call:
    return Call("POST", f"/v1/documents/{document_id}/summarize", True)  # one in flight per document


def update_document(document_id: str, metadata: dict[str, Any]) -> Call:
    return Call("PATCH", f"/v1/documents/{document_id}", True, json={"metadata": metadata}, route="PATCH /v1/documents")


def reingest_document(document_id: str) -> Call:
    # Not resent: a second send would answer 409 while the first one's ingest is in flight.
    return Call("POST", f"/v1/documents/{document_id}/reingest", False, route="POST /v1/documents/{id}/reingest")


def _scope(collection_ids: list[str] | None, filter: dict[str, Any] | None) -> dict[str, Any]:
    return _params(collection_ids=collection_ids, filter=filter)


def search(
    query: str, top_k: int, collection_ids: list[str] | None = None, filter: dict[str, Any] | None = None
) -> Call:
    body = {"query": query, "top_k": top_k, **_scope(collection_ids, filter)}
    return Call("POST", "/v1/search", True, json=body)


def create_session(title: str | None, metadata: dict[str, Any] | None, collection_ids: list[str] | None = None) -> Call:
    body = {"title": title, "metadata": metadata or {}, **_scope(collection_ids, None)}
    return Call("POST", "/v1/sessions", False, json=body)


def get_session(session_id: str) -> Call:
    return Call("GET", f"/v1/sessions/{session_id}", True)


def list_sessions(limit: int, cursor: str | None) -> Call:
    params = _params(limit=limit, cursor=cursor)
    return Call("GET", "/v1/sessions", True, params=params, route="GET /v1/sessions (session list)")


def delete_session(session_id: str) -> Call:
    return Call("DELETE", f"/v1/sessions/{session_id}", True, route="DELETE /v1/sessions/{id}")


def list_messages(session_id: str, limit: int, cursor: str | None) -> Call:
    params = _params(limit=limit, cursor=cursor)
    return Call(
        "GET", f"/v1/sessions/{session_id}/messages", True, params=params, route="GET /v1/sessions/{id}/messages"
    )


def send_message(
    session_id: str, content: str, collection_ids: list[str] | None = None, filter: dict[str, Any] | None = None
) -> Call:
    body = {"content": content, **_scope(collection_ids, filter)}
    return Call("POST", f"/v1/sessions/{session_id}/messages", False, json=body)


def summarize_session(session_id: str) -> Call:
    # Idempotent on the server: while a summary job is in flight, asking again answers that job.
    return Call("POST", f"/v1/sessions/{session_id}/summarize", True)


def get_job(job_id: str) -> Call:
    return Call("GET", f"/v1/jobs/{job_id}", True)


def cancel_job(job_id: str) -> Call:
    return Call("POST", f"/v1/jobs/{job_id}/cancel", True)


def retry_job(job_id: str) -> Call:
    return Call("POST", f"/v1/jobs/{job_id}/retry", False, route="POST /v1/jobs/{id}/retry")


def list_jobs(kind: str | None, status: str | None, cursor: str | None, limit: int) -> Call:
    params = _params(kind=kind, status=status, cursor=cursor, limit=limit)
    return Call("GET", "/v1/jobs", True, params=params, route="GET /v1/jobs (job list)")


def events(job_id: str, after: str | None) -> Call:
    return Call("GET", f"/v1/jobs/{job_id}/events", True, headers={"Last-Event-ID": after} if after else {})


COLLECTIONS = "/v1/collections"


def create_collection(name: str) -> Call:
    return Call("POST", COLLECTIONS, False, json={"name": name}, route="POST /v1/collections")


def list_collections(limit: int, cursor: str | None) -> Call:
    return Call("GET", COLLECTIONS, True, params=_params(limit=limit, cursor=cursor), route="GET /v1/collections")


def get_collection(collection_id: str) -> Call:
    return Call("GET", f"{COLLECTIONS}/{collection_id}", True)


def rename_collection(collection_id: str, name: str) -> Call:
    return Call("PATCH", f"{COLLECTIONS}/{collection_id}", True, json={"name": name})


def delete_collection(collection_id: str) -> Call:
    return Call("DELETE", f"{COLLECTIONS}/{collection_id}", True)


def add_to_collection(collection_id: str, document_ids: list[str]) -> Call:
    return Call("POST", f"{COLLECTIONS}/{collection_id}/documents", True, json={"document_ids": document_ids})


def remove_from_collection(collection_id: str, document_id: str) -> Call:
    return Call("DELETE", f"{COLLECTIONS}/{collection_id}/documents/{document_id}", True)


def collection_documents(collection_id: str, limit: int, cursor: str | None) -> Call:
    params = _params(limit=limit, cursor=cursor)
    return Call("GET", f"{COLLECTIONS}/{collection_id}/documents", True, params=params)
