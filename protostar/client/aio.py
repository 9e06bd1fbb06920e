"""The async client: :class:`AsyncClient` is :class:`protostar.client.sync.Client` call for call, awaited."""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncIterator, Iterable
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
from protostar.client.sync import http_options


class AsyncClient:
    """``AsyncClient(base_url, api_key)``: as :class:`protostar.client.Client`, with ``await``.

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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or Retry()
        self.upload_timeout = upload_timeout
        self.stream_timeout = stream_timeout
        self.http = httpx.AsyncClient(transport=transport, **http_options(base_url, api_key, timeout))
        self.jobs = AsyncJobs(self)
        self.documents = AsyncDocuments(self)
        self.sessions = AsyncSessions(self)
        self.collections = AsyncCollections(self)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()

    async def send(self, call: Call) -> httpx.Response:
        """One call, retried as its kind allows; an answer of 400 or more raises :class:`APIError`."""
        attempt = 0
        while True:
            try:
                response = await self.http.request(call.method, call.path, **call.request_kwargs())
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
            await asyncio.sleep(delay)
            attempt += 1

    async def json(self, call: Call) -> Any:
        return (await self.send(call)).json()

    async def upload(
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
        call = await asyncio.to_thread(  # reading the file is blocking
            calls.upload, source, filename=filename, metadata=metadata, timeout=self.upload_timeout
        )
        body = await self.json(call)
        upload = Upload(Document.of(body["document"]), body.get("job_id"), bool(body.get("duplicate")))
        if not wait or upload.job_id is None:
            return upload
        job = await self.jobs.wait(upload.job_id, timeout=timeout)
        return Upload(await self.documents.get(upload.document.id), upload.job_id, upload.duplicate, job)

    async def search(
        self,
        query: str,
        *,
        top_k: int = 5,
        collection_ids: list[str] | None = None,
        filter: dict[str, Any] | None = None,
    ) -> list[Hit]:
        """Hybrid search in your documents; only those in ``collection_ids`` and matching ``filter`` when given."""
        body = await self.json(calls.search(query, top_k, collection_ids, filter))
        return [Hit.of(h) for h in body["hits"]]

    async def chat(self, session_id: str, text: str) -> AsyncChatStream:
        """Post ``text`` to the session; iterate the result for the answer's tokens as they are generated."""
        return AsyncChatStream(self, await self.sessions.send(session_id, text))

    async def summarize(
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
        accepted = Accepted.of(await self.json(call))
        return await self.jobs.wait(accepted.job_id, timeout=timeout) if wait else await self.jobs.get(accepted.job_id)


class AsyncJobs:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def get(self, job_id: str) -> Job:
        return Job.of(await self._c.json(calls.get_job(job_id)))

    async def cancel(self, job_id: str) -> Job:
        return Job.of(await self._c.json(calls.cancel_job(job_id)))

    async def retry(self, job_id: str) -> Job:
        """Run a failed or cancelled job again. Raises :class:`NotSupported` on a server without the route."""
        return Job.of(await self._c.json(calls.retry_job(job_id)))

    async def list(
        self, *, kind: str | None = None, status: str | None = None, cursor: str | None = None, limit: int = 20
    ) -> Page[Job]:
        """Newest first. Raises :class:`NotSupported` on a server without the route."""
        body = await self._c.json(calls.list_jobs(kind, status, cursor, limit))
        return Page([Job.of(j) for j in body["items"]], body.get("next_cursor"))

    async def wait(self, job_id: str, *, timeout: float | None = None, interval: float = 0.25) -> Job:
        """Poll until the job is ``succeeded``, ``failed`` or ``cancelled``; :class:`WaitTimeout` after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = await self.get(job_id)
            if job.finished:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"job {job_id} is still {job.status} after {timeout} s")
            await asyncio.sleep(interval)
            interval = min(interval * 1.5, 2.0)

    async def events(self, job_id: str, *, after: str | None = None) -> AsyncIterator[Event]:
        """The job's events until ``done``; a dropped connection is resumed with ``Last-Event-ID``."""
        attempt = 0
        while True:
            call = calls.events(job_id, after)
            try:
                async with self._c.http.stream(
                    "GET", call.path, headers=call.headers, timeout=self._c.stream_timeout
                ) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        delay = self._c.retry.next_delay(attempt, True, response=response)
                        if delay is None:
                            raise from_response(response)
                    else:
                        decoder = Decoder()
                        async for line in response.aiter_lines():
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
            await asyncio.sleep(delay)
            attempt += 1


class AsyncDocuments:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def get(self, document_id: str) -> Document:
        return Document.of(await self._c.json(calls.get_document(document_id)))

    async def list(self, *, limit: int = 20, cursor: str | None = None) -> Page[Document]:
        body = await self._c.json(calls.list_documents(limit, cursor))
        return Page([Document.of(d) for d in body["items"]], body.get("next_cursor"))

    async def iterate(self, *, page_size: int = 100) -> AsyncIterator[Document]:
        """Every document, newest first, page after page."""
        cursor: str | None = None
        while True:
            page = await self.list(limit=page_size, cursor=cursor)
            for item in page.items:
                yield item
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def delete(self, document_id: str) -> None:
        await self._c.send(calls.delete_document(document_id))

    async def update(self, document_id: str, *, metadata: dict[str, Any]) -> Document:
        """Replace the document's metadata."""
        return Document.of(await self._c.json(calls.update_document(document_id, metadata)))

    async def reingest(self, document_id: str) -> Accepted:
        """Ingest the stored file again under the same id (:class:`APIError` 409 while an ingest of it is in
        flight). Raises :class:`NotSupported` on a server without the route."""
        return Accepted.of(await self._c.json(calls.reingest_document(document_id)))


class AsyncSessions:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(
        self,
        *,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
        collection_ids: list[str] | None = None,
    ) -> str:
        """A new chat session (bound to ``collection_ids``: its answers retrieve only from them); its id."""
        body = await self._c.json(calls.create_session(title, metadata, collection_ids))
        return str(body["session_id"])

    async def list(self, *, limit: int = 20, cursor: str | None = None) -> Page[Session]:
        """Newest first, without their messages. Raises :class:`NotSupported` on a server without the route."""
        body = await self._c.json(calls.list_sessions(limit, cursor))
        return Page([Session.of(s) for s in body["items"]], body.get("next_cursor"))

    async def messages(self, session_id: str, *, limit: int = 20, cursor: str | None = None) -> Page[Message]:
        """Latest first; ``next_cursor`` pages back to older ones. :class:`NotSupported` on an older server."""
        body = await self._c.json(calls.list_messages(session_id, limit, cursor))
        return Page([Message.of(m) for m in body["items"]], body.get("next_cursor"))

    async def delete(self, session_id: str) -> None:
        """Cancels its answers in flight and deletes it. Raises :class:`NotSupported` on an older server."""
        await self._c.send(calls.delete_session(session_id))

    async def get(self, session_id: str) -> Session:
        return Session.of(await self._c.json(calls.get_session(session_id)))

    async def send(
        self,
        session_id: str,
        content: str,
        *,
        collection_ids: builtins.list[str] | None = None,
        filter: dict[str, Any] | None = None,
    ) -> MessageAccepted:
        """Post a message; its answer is a job (stream it with ``jobs.events`` or use :meth:`Client.chat`)."""
        return MessageAccepted.of(await self._c.json(calls.send_message(session_id, content, collection_ids, filter)))


class AsyncCollections:
    """Named groups of your documents: search and chat can be limited to some."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(self, name: str) -> Collection:
        return Collection.of(await self._c.json(calls.create_collection(name)))

    async def list(self, *, limit: int = 20, cursor: str | None = None) -> Page[Collection]:
        body = await self._c.json(calls.list_collections(limit, cursor))
        return Page([Collection.of(c) for c in body["items"]], body.get("next_cursor"))

    async def get(self, collection_id: str) -> Collection:
        return Collection.of(await self._c.json(calls.get_collection(collection_id)))

    async def rename(self, collection_id: str, name: str) -> Collection:
        return Collection.of(await self._c.json(calls.rename_collection(collection_id, name)))

    async def delete(self, collection_id: str) -> None:
        """Delete the collection; its documents stay."""
        await self._c.send(calls.delete_collection(collection_id))

    async def add(self, collection_id: str, document_ids: Iterable[str]) -> Collection:
        return Collection.of(await self._c.json(calls.add_to_collection(collection_id, [*document_ids])))

    async def remove(self, collection_id: str, document_id: str) -> None:
        await self._c.send(calls.remove_from_collection(collection_id, document_id))

    async def documents(self, collection_id: str, *, limit: int = 20, cursor: str | None = None) -> Page[Document]:
        body = await self._c.json(calls.collection_documents(collection_id, limit, cursor))
        return Page([Document.of(d) for d in body["items"]], body.get("next_cursor"))


class AsyncChatStream:
    """A chat answer as it is generated: iterate for ``str`` tokens, and :class:`Reset` when the answer starts
    over (its job was redelivered after a worker died: drop what you showed). The iteration ends after the
    last token; it raises :class:`JobFailed` if the answer failed or was cancelled. Then :meth:`answer`.
    """

    def __init__(self, client: AsyncClient, accepted: MessageAccepted) -> None:
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

    async def __aiter__(self) -> AsyncIterator[str | Reset]:
        async for event in self._c.jobs.events(self.job_id):
            out = self.state.feed(event)
            if out is not None:
                yield out
        self.state.check()

    async def answer(self) -> Answer:
        """The persisted answer with its sources (reads the job; call after the iteration)."""
        return Answer.of(await self._c.jobs.wait(self.job_id))

    async def cancel(self) -> Job:
        return await self._c.jobs.cancel(self.job_id)
