"""OpenAI-compatible chat: ``POST /v1/chat/completions`` and ``GET /v1/models`` (bodies in
:mod:`protostar.api.completions`).

A completion is a chat job like a session's message, on the same queue and workers, under the same turns, quotas
and usage accounting: the job's payload carries the conversation (``protostar.chat.submit.complete``) and the
pipeline answers its last user message with retrieval over the tenant's documents. The route holds one of the
tenant's open streams (``PROTOSTAR_TENANT_MAX_STREAMS``: ``429`` before the job is queued), queues the job and
follows its events through the API process's one relay (``protostar.api.sse.Relay``): each ``token`` event becomes
a ``chat.completion.chunk`` (``stream: true``), or the answer is read from the job's row once it has ended. A
caller that goes away before the end (a closed connection) cancels the job, as does a stream that reaches its
idle or lifetime limit, since a completion cannot be resumed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from protostar.api import completions as oai
from protostar.api.deps import PrincipalDep, StateDep
from protostar.api.errors import error_response
from protostar.api.schemas import QUOTA, TOO_MANY_STREAMS
from protostar.api.scope import scope_of
from protostar.api.sse import EventStreamResponse, Relay, relay_for
from protostar.api.state import AppState
from protostar.auth import Principal
from protostar.chat.submit import complete
from protostar.constants import EventType, JobStatus
from protostar.db.models import Job
from protostar.errors import NotFound, ProtostarError, ValidationFailed
from protostar.jobs import repo
from protostar.jobs.cancel import cancel

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["openai"])

DISCONNECT_CHECK = 1.0  # seconds between looks at the connection while a non-streamed answer is generated
INTERRUPTED = "the answer was interrupted before its end; ask again"


class JobEnded(ProtostarError):
    """A completion's job ended without an answer: its code, message and the status of that code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code  # type: ignore[misc]


def _ended(exc: JobEnded) -> JSONResponse:
    """The error of a job that ended without an answer. OpenAI's clients send a request again after a 409 or a 5xx:
    only a transient one (503) is worth it; another would queue the same failure (or undo a cancel) again."""
    response = error_response(exc.status, exc.code, exc.message)
    response.headers["x-should-retry"] = "true" if exc.status == 503 else "false"
    return response


def _status_of(code: str | None) -> int:
    """The HTTP status of an error code in ``protostar.errors``' tree (500 for one it does not name)."""
    pending: list[type[ProtostarError]] = [ProtostarError]
    while pending:
        cls = pending.pop()
        if cls.code == code:
            return cls.status
        pending += cls.__subclasses__()
    return 500


@router.get("/models", response_model=oai.ModelList)
def list_models(principal: PrincipalDep, state: StateDep) -> oai.ModelList:
    """The model to name in a completion: the operator's chat model (``PROTOSTAR_LLM_MODEL``), answering with
    retrieval over your documents."""
    return oai.ModelList(data=[oai.ModelOut(id=state.settings.llm_model)])


@router.get("/models/{model_id:path}", response_model=oai.ModelOut)
def get_model(model_id: str, principal: PrincipalDep, state: StateDep) -> oai.ModelOut:
    if model_id != state.settings.llm_model:
        raise NotFound(f"model {model_id!r} not found; GET /v1/models lists them")
    return oai.ModelOut(id=model_id)


@router.post(
    "/chat/completions",
    response_model=oai.ChatCompletionOut,
    responses={
        **QUOTA,
        **TOO_MANY_STREAMS,
        200: {"content": {"text/event-stream": {}}, "description": "the answer, or its chunks with stream: true"},
    },
)
async def chat_completions(
    body: oai.ChatCompletionIn, request: Request, principal: PrincipalDep, state: StateDep
) -> oai.ChatCompletionOut | StreamingResponse | JSONResponse:
    """OpenAI's chat completion, answered with retrieval over your documents by a chat job (same queue, limits
    and accounting as a session's message). The last user message is the question, earlier user and assistant
    messages the history. ``stream: true``: Server-Sent Events of ``chat.completion.chunk`` ending with
    ``data: [DONE]`` (``stream_options.include_usage``: a last chunk with the usage). Closing the connection
    before the end cancels the job."""
    if body.model != state.settings.llm_model:
        raise NotFound(f"model {body.model!r} not found; GET /v1/models lists them")
    turns = body.turns()
    if not turns or turns[-1]["role"] != "user" or not turns[-1]["content"].strip():
        raise ValidationFailed("messages: the last user or assistant message must be the user's question, not empty")
    leases = state.leases
    if leases is None:
        raise RuntimeError("the event hub is not running")  # the lifespan starts it before any request
    lease = await leases.acquire(principal.tenant_id)  # 429 past the tenant's open streams, before the job

    def submit() -> Job:
        with state.sessions() as session:
            scope_of(session, tenant_id=principal.tenant_id, collection_ids=body.collection_ids, filter=None)  # 404
            return complete(
                session,
                dispatcher=state.clients.dispatcher,
                tenant_id=principal.tenant_id,
                messages=turns,
                max_tokens=body.answer_tokens(),
                collection_ids=body.collection_ids,
            )

    try:
        job = await to_thread.run_sync(submit)
        relay = relay_for(request, state, job.id, "0-0", lease)
    except BaseException:
        leases.release(lease)
        raise
    follow = _Follow(state, principal, job, relay, model=body.model, created=int(time.time()))
    if not body.stream:
        try:
            return await follow.answer(request)
        except JobEnded as exc:
            return _ended(exc)
        finally:
            await follow.close()
            leases.release(lease)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def close() -> None:
        await follow.close()
        leases.release(lease)

    return EventStreamResponse(follow.chunks(include_usage=include_usage), on_close=close)


class _Follow:
    """One completion's job, followed to its end; cancelled at :meth:`close` if it never got there."""

    def __init__(
        self, state: AppState, principal: Principal, job: Job, relay: Relay, *, model: str, created: int
    ) -> None:
        self.state, self.principal, self.job, self.relay = state, principal, job, relay
        self.model, self.created = model, created
        self.ended = False

    async def answer(self, request: Request) -> oai.ChatCompletionOut:
        checked = time.monotonic()
        async for item in self.relay.items(self.job):
            if not isinstance(item, bytes) and item.final:
                self.ended = True
                break
            if time.monotonic() - checked >= DISCONNECT_CHECK:
                checked = time.monotonic()
                if await request.is_disconnected():
                    break
        if not self.ended:  # a limit reached or the caller gone: cancelled at close
            raise JobEnded(504, "time_limit", INTERRUPTED)
        row = await to_thread.run_sync(self._row)
        if row.status != JobStatus.SUCCEEDED:
            code = row.error_code or row.status
            raise JobEnded(_status_of(code), code, row.error_message or f"the answer's job ended {row.status}")
        return oai.completion(job_id=row.id, created=self.created, model=self.model, result=row.result or {})

    async def chunks(self, *, include_usage: bool) -> AsyncIterator[bytes]:
        job_id, sent, attempt = self.job.id, False, None
        yield self._chunk(delta={"role": "assistant", "content": ""})
        async for item in self.relay.items(self.job):
            if isinstance(item, bytes):
                if item.startswith(b":"):  # a keep-alive; a limit's comment ends the stream (cancelled at close)
                    yield item
                continue
            if item.type == EventType.STATUS and item.data.get("status") == JobStatus.RUNNING:
                if sent and attempt is not None and item.data.get("attempt") != attempt:
                    # Sent again after it began (its worker was lost): what was sent cannot be taken back.
                    yield oai.error("interrupted", INTERRUPTED)
                    return
                attempt = item.data.get("attempt")
            elif item.type == EventType.TOKEN and item.data.get("text"):
                sent = True
                yield self._chunk(delta={"content": str(item.data["text"])})
            elif item.final:
                self.ended = True
                row = await to_thread.run_sync(self._row)
                if row.status != JobStatus.SUCCEEDED:
                    code = row.error_code or row.status
                    yield oai.error(code, row.error_message or f"the answer's job ended {row.status}")
                    return
                result = row.result or {}
                yield self._chunk(finish=oai.finish_reason(result.get("finish_reason")))
                if include_usage:
                    yield oai.chunk(job_id=job_id, created=self.created, model=self.model, used=oai.usage(result))
                yield oai.DONE
                return
        yield oai.error("interrupted", INTERRUPTED)

    def _chunk(self, *, delta: dict[str, str] | None = None, finish: str | None = None) -> bytes:
        return oai.chunk(job_id=self.job.id, created=self.created, model=self.model, delta=delta, finish=finish)

    def _row(self) -> Job:
        with self.state.sessions() as session:
            return repo.get_for_tenant(session, tenant_id=self.principal.tenant_id, job_id=self.job.id)

    async def close(self) -> None:
        """Cancel the job unless it was followed to its end (the caller went away, or a limit was reached)."""
        if self.ended:
            return
        try:
            await to_thread.run_sync(self._cancel)
        except Exception:  # boundary: the response is over; the job then ends on its own
            logger.exception("job_id=%s could not be cancelled after its caller left", self.job.id)

    def _cancel(self) -> None:
        clients = self.state.clients
        with self.state.sessions() as session:
            job = cancel(
                session,
                tenant_id=self.principal.tenant_id,
                job_id=self.job.id,
                client=clients.redis,
                events=clients.events,
            )
            if job.status == JobStatus.CANCELLED and job.started_at is None:  # ended queued: its turn is free
                clients.dispatcher.next_turn(tenant_id=self.principal.tenant_id, queue=job.queue)
        logger.info("job_id=%s cancelled: its completion's caller left before the end", self.job.id)
