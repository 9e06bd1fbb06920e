"""The blocking client. :mod:`protostar.client.aio` is its async twin, call for call."""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx

from protostar.client import calls
from protostar.client.calls import Call, Retry
from protostar.client.errors import TransportError, WaitTimeout, from_response
from protostar.client.models import (
    Accepted,
    Answer,
    Collection,
    Document,
    Event,
    Hit,
    Job,
    Message,
    MessageAccepted,
    Page,
    Reset,
    Session,
    Source,
    Upload,
)
from protostar.client.sse import ChatState, Decoder

USER_AGENT = "protostar-client"


def http_options(base_url: str, api_key: str, timeout: float) -> dict[str, Any]:
    return {
        "base_url": base_url.rstrip("/"),
        "headers": {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT},
        "timeout": httpx.Timeout(timeout, connect=min(timeout, 5.0)),
    }


class Client:
    """``Client(base_url, api_key)``: every call of the API, typed; errors as :mod:`protostar.client.errors`.

    ``timeout`` bounds each request (uploads get ``upload_timeout``; an event stream waits up to
    ``stream_timeout`` between two events, and the server sends a keep-alive every 10 s). ``retry`` says how
    often to retry a call that may be retried (see :mod:`protostar.client.calls`). ``transport`` is httpx's.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        upload_timeout: float = 300.0,
        stream_timeout: float = 60.0,
        retry: Retry | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or Retry()
        self.upload_timeout = upload_timeout
        self.stream_timeout = stream_timeout
        self.http = httpx.Client(transport=transport, **http_options(base_url, api_key, timeout))
        self.jobs = Jobs(self)
        self.documents = Documents(self)
        self.sessions = Sessions(self)
        self.collections = Collections(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def send(self, call: Call) -> httpx.Response:
        """One call, retried as its kind allows; an answer of 400 or more raises :class:`APIError`."""
        attempt = 0
        while True:
            try:
                response = self.http.request(call.method, call.path, **call.request_kwargs())
            except httpx.TransportError as exc:
                delay = self.retry.next_delay(attempt, call.idempotent, error=exc)
                if delay is None:
                    raise TransportError(calls.transport_message(call, self.base_url, exc)) from exc
            else:
                if response.status_code < 400:
                    return response
                delay = self.retry.next_delay(attempt, call.idempotent, response=response)
                if delay is None:
                    raise from_response(response, route=call.route)
            time.sleep(delay)
            attempt += 1

    def json(self, call: Call) -> Any:
        return self.send(call).json()

    def upload(
        self,
        source: str | Path | bytes,
        *,
        filename: str | None = None,
        metadata: dict[str, Any] | None = None,
        collection_id: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> Upload:
        """Upload a file (a path, or bytes with ``filename``); ``wait`` for its ingestion to end (up to ``timeout``)."""
        call = calls.upload(
            source, filename=filename, metadata=metadata, timeout=self.upload_timeout, collection_id=collection_id
        )
        body = self.json(call)
        upload = Upload(Document.of(body["document"]), body.get("job_id"), bool(body.get("duplicate")))
        if not wait or upload.job_id is None:
            return upload
        job = self.jobs.wait(upload.job_id, timeout=timeout)
        return Upload(self.documents.get(upload.document.id), upload.job_id, upload.duplicate, job)

    def search(
        self,
        query: str,
        *,
        top_k: int = 5,
        collection_ids: list[str] | None = None,
        filter: dict[str, Any] | None = None,
    ) -> list[Hit]:
        """Hybrid search in your documents; only those in ``collection_ids`` and matching ``filter`` when given."""
        return [Hit.of(h) for h in self.json(calls.search(query, top_k, collection_ids, filter))["hits"]]

    def chat(self, session_id: str, text: str) -> ChatStream:
        """Post ``text`` to the session; iterate the result for the answer's tokens as they are generated."""
        return ChatStream(self, self.sessions.send(session_id, text))

    def summarize(
        self,
        *,
        session_id: str | None = None,
        document_id: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> Job:
        """Queue a summary of a session or a document; the job as it is now, or once it ended with ``wait``."""
        if (session_id is None) == (document_id is None):
            raise ValueError("summarize one session_id or one document_id")
        call = calls.summarize_session(session_id) if session_id else calls.summarize_document(str(document_id))
        accepted = Accepted.of(self.json(call))
        return self.jobs.wait(accepted.job_id, timeout=timeout) if wait else self.jobs.get(accepted.job_id)


class Jobs:
    def __init__(self, client: Client) -> None:
        self._c = client

    def get(self, job_id: str) -> Job:
        return Job.of(self._c.json(calls.get_job(job_id)))

    def cancel(self, job_id: str) -> Job:
        return Job.of(self._c.json(calls.cancel_job(job_id)))

    def retry(self, job_id: str) -> Job:
        """Run a failed or cancelled job again. Raises :class:`NotSupported` on a server without the route."""
        return Job.of(self._c.json(calls.retry_job(job_id)))

    def list(
        self, *, kind: str | None = None, status: str | None = None, cursor: str | None = None, limit: int = 20
    ) -> Page[Job]:
        """Newest first. Raises :class:`NotSupported` on a server without the route."""
        body = self._c.json(calls.list_jobs(kind, status, cursor, limit))
        return Page([Job.of(j) for j in body["items"]], body.get("next_cursor"))

    def wait(self, job_id: str, *, timeout: float | None = None, interval: float = 0.25) -> Job:
        """Poll until the job is ``succeeded``, ``failed`` or ``cancelled``; :class:`WaitTimeout` after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.finished:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"job {job_id} is still {job.status} after {timeout} s")
            time.sleep(interval)
            interval = min(interval * 1.5, 2.0)

    def events(self, job_id: str, *, after: str | None = None) -> Iterator[Event]:
        """The job's events until ``done``; a dropped connection is resumed with ``Last-Event-ID``."""
        attempt = 0
        while True:
            call = calls.events(job_id, after)
            try:
                with self._c.http.stream(
                    "GET", call.path, headers=call.headers, timeout=self._c.stream_timeout
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        delay = self._c.retry.next_delay(attempt, True, response=response)
                        if delay is None:
                            raise from_response(response)
                    else:
                        decoder = Decoder()
                        for line in response.iter_lines():
                            event = decoder.feed(line)
                            if event is None:
                                continue
                            after, attempt = event.id, 0
                            yield event
                            if event.type == "done":
                                return
                        raise httpx.RemoteProtocolError("the event stream ended before its done event")
            except httpx.TransportError as exc:
                delay = self._c.retry.next_delay(attempt, True, error=exc)
                if delay is None:
                    raise TransportError(calls.transport_message(call, self._c.base_url, exc)) from exc
            time.sleep(delay)
            attempt += 1


class Documents:
    def __init__(self, client: Client) -> None:
        self._c = client

    def get(self, document_id: str) -> Document:
        return Document.of(self._c.json(calls.get_document(document_id)))

    def list(self, *, limit: int = 20, cursor: str | None = None) -> Page[Document]:
        body = self._c.json(calls.list_documents(limit, cursor))
        return Page([Document.of(d) for d in body["items"]], body.get("next_cursor"))

    def iterate(self, *, page_size: int = 100) -> Iterator[Document]:
        """Every document, newest first, page after page."""
        cursor: str | None = None
        while True:
            page = self.list(limit=page_size, cursor=cursor)
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def delete(self, document_id: str) -> None:
        self._c.send(calls.delete_document(document_id))

    def update(self, document_id: str, *, metadata: dict[str, Any]) -> Document:
        """Replace the document's metadata."""
        return Document.of(self._c.json(calls.update_document(document_id, metadata)))

    def reingest(self, document_id: str) -> Accepted:
        """Ingest the stored file again under the same id (:class:`APIError` 409 while an ingest of it is in
        flight). Raises :class:`NotSupported` on a server without the route."""
        return Accepted.of(self._c.json(calls.reingest_document(document_id)))


class Sessions:
    def __init__(self, client: Client) -> None:
        self._c = client

    def create(
        self,
        *,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
        collection_ids: list[str] | None = None,
    ) -> str:
        """A new chat session (bound to ``collection_ids``: its answers retrieve only from them); its id."""
        return str(self._c.json(calls.create_session(title, metadata, collection_ids))["session_id"])

    def list(self, *, limit: int = 20, cursor: str | None = None) -> Page[Session]:
        """Newest first, without their messages. Raises :class:`NotSupported` on a server without the route."""
        body = self._c.json(calls.list_sessions(limit, cursor))
        return Page([Session.of(s) for s in body["items"]], body.get("next_cursor"))

    def messages(self, session_id: str, *, limit: int = 20, cursor: str | None = None) -> Page[Message]:
        """Latest first; ``next_cursor`` pages back to older ones. :class:`NotSupported` on an older server."""
        body = self._c.json(calls.list_messages(session_id, limit, cursor))
        return Page([Message.of(m) for m in body["items"]], body.get("next_cursor"))

    def delete(self, session_id: str) -> None:
        """Cancels its answers in flight and deletes it. Raises :class:`NotSupported` on an older server."""
        self._c.send(calls.delete_session(session_id))

    def get(self, session_id: str) -> Session:
        return Session.of(self._c.json(calls.get_session(session_id)))

    def send(
        self,
        session_id: str,
        content: str,
        *,
        collection_ids: builtins.list[str] | None = None,
        filter: dict[str, Any] | None = None,
    ) -> MessageAccepted:
        """Post a message; its answer is a job (stream it with ``jobs.events`` or use :meth:`Client.chat`)."""
        return MessageAccepted.of(self._c.json(calls.send_message(session_id, content, collection_ids, filter)))


class Collections:
    """Named groups of your documents: search and chat can be limited to some."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def create(self, name: str) -> Collection:
        return Collection.of(self._c.json(calls.create_collection(name)))

    def list(self, *, limit: int = 20, cursor: str | None = None) -> Page[Collection]:
        body = self._c.json(calls.list_collections(limit, cursor))
        return Page([Collection.of(c) for c in body["items"]], body.get("next_cursor"))

    def get(self, collection_id: str) -> Collection:
        return Collection.of(self._c.json(calls.get_collection(collection_id)))

    def rename(self, collection_id: str, name: str) -> Collection:
        return Collection.of(self._c.json(calls.rename_collection(collection_id, name)))

    def delete(self, collection_id: str) -> None:
        """Delete the collection; its documents stay."""
        self._c.send(calls.delete_collection(collection_id))

    def add(self, collection_id: str, document_ids: Iterable[str]) -> Collection:
        return Collection.of(self._c.json(calls.add_to_collection(collection_id, [*document_ids])))

    def remove(self, collection_id: str, document_id: str) -> None:
        self._c.send(calls.remove_from_collection(collection_id, document_id))

    def documents(self, collection_id: str, *, limit: int = 20, cursor: str | None = None) -> Page[Document]:
        body = self._c.json(calls.collection_documents(collection_id, limit, cursor))
        return Page([Document.of(d) for d in body["items"]], body.get("next_cursor"))


class ChatStream:
    """A chat answer as it is generated: iterate for ``str`` tokens, and :class:`Reset` when the answer starts
    over (its job was redelivered after a worker died: drop what you showed). The iteration ends after the
    last token; it raises :class:`JobFailed` if the answer failed or was cancelled. Then :meth:`answer`.
    """

    def __init__(self, client: Client, accepted: MessageAccepted) -> None:
        self._c = client
        self.job_id = accepted.job_id
        self.message_id = accepted.message_id
        self.state = ChatState(accepted.job_id)

    @property
    def text(self) -> str:
        """The answer so far (of the current attempt)."""
        return self.state.text

    @property
    def sources(self) -> list[Source]:
        """The answer's numbered sources, known before its first token (empty from an older server)."""
        return self.state.sources

    def __iter__(self) -> Iterator[str | Reset]:
        for event in self._c.jobs.events(self.job_id):
            out = self.state.feed(event)
            if out is not None:
                yield out
        self.state.check()

    def answer(self) -> Answer:
        """The persisted answer with its sources (reads the job; call after the iteration)."""
        return Answer.of(self._c.jobs.wait(self.job_id))

    def cancel(self) -> Job:
        return self._c.jobs.cancel(self.job_id)
