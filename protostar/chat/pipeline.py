"""One chat answer: retrieve → prompt (the session's latest summary and only the turns after it) → a turn at
the LLM (none now: ``LLMBusy``, and the shell sends the job again later) → stream from the LLM (every piece a
``token`` event) → persist. (The task shell then queues the session's summary once enough is new.)

Plain and Celery-free: the task shell calls :func:`answer` with the job's context and the clients it uses. A
redelivered job regenerates the answer and rewrites the same message row (one answer per question); its token
events start again after a ``status`` event with the new ``attempt``, so a client restarts the text it shows there.
A cancelled or broken generation keeps what was written so far as a ``partial`` answer.

Citations: the prompt numbers its sources ``[1]``, ``[2]``…; a ``sources`` event carries them (file name, page,
the chunk's ordinal and whole text) before the first token, so a reader can render them early; the answer, its
job's result and its message then mark each source ``cited`` when the answer's text has its ``[n]`` (also in a
list, ``[1, 3]``). A session's answer that cites none ends with the number of the source it draws on, when its words
point to one (``chat.attribution``; small models seldom cite).

A chat job may instead carry its conversation in its payload (``messages``: ``POST /v1/chat/completions``, the
OpenAI-compatible route): the same retrieval, prompt, turn at the LLM and token events, on the same queue and
workers, with the last user message as the question and the turns before it as the history; nothing is persisted
but the job's row (the answer in its result), and no summary follows.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from protostar.chat import repo
from protostar.chat.attribution import attribute
from protostar.chat.prompt import Prompt, Turn, build
from protostar.constants import EventType, MessageStatus
from protostar.documents.filters import parse_filter
from protostar.embeddings.embed import Embedder
from protostar.embeddings.tokens import approx_tokens
from protostar.errors import Cancelled, InputRejected, JobFailed
from protostar.jobs.context import JobContext
from protostar.jobs.repo import autocommit
from protostar.llm.call import LLM
from protostar.llm.stream import Generation
from protostar.search import Hit, Scope, in_scope, search
from protostar.settings import Settings
from protostar.summary import repo as summary_repo

logger = logging.getLogger(__name__)

CANCEL_TIMEOUT = 2.0  # seconds a cancel request to PostgreSQL may take


def answer(ctx: JobContext, *, engine: Engine, embedder: Embedder, llm: LLM, settings: Settings) -> dict[str, Any]:
    """Answer the job's question: a session's message (``message_id``), or a conversation the payload carries
    (``messages``, from ``POST /v1/chat/completions``; see :func:`from_payload`)."""
    if "messages" in ctx.payload:
        return complete(ctx, engine=engine, embedder=embedder, llm=llm, settings=settings)
    message_id = uuid.UUID(ctx.payload["message_id"])
    with autocommit(engine) as conn:
        start = load_context(
            conn,
            tenant_id=ctx.tenant_id,
            message_id=message_id,
            limit=settings.chat_history_messages,
            model=embedder.model,
        )
    question, summary = start.question, start.summary

    def keep(prompt: Prompt, generation: Generation, extra: dict[str, int], status: str) -> uuid.UUID:
        return _save(ctx, question, prompt, generation, extra, status=status)

    def keep_partial(prompt: Prompt, generation: Generation, extra: dict[str, int]) -> None:
        with contextlib.suppress(InputRejected):  # its session was deleted (which cancelled this): keep nothing
            keep(prompt, generation, extra, MessageStatus.PARTIAL)

    asked = Asked(question.content, start.history, summary.content if summary else None, settings.llm_max_tokens)
    prompt, generation, usage_extra = _generate(
        ctx,
        asked,
        engine=engine,
        embedder=embedder,
        llm=llm,
        settings=settings,
        extra=_usage_extra(summary),
        on_partial=keep_partial,
        searchable=start.searchable,
        attribute_sources=True,
    )
    answer_id = keep(prompt, generation, usage_extra, MessageStatus.COMPLETE)
    return {"message_id": str(answer_id), **_result(prompt, generation, usage_extra)}


def complete(ctx: JobContext, *, engine: Engine, embedder: Embedder, llm: LLM, settings: Settings) -> dict[str, Any]:
    """Answer a conversation the payload carries; nothing is written but the job's row (its result)."""
    asked = from_payload(ctx.payload, history_limit=settings.chat_history_messages, max_tokens=settings.llm_max_tokens)
    prompt, generation, usage_extra = _generate(
        ctx, asked, engine=engine, embedder=embedder, llm=llm, settings=settings, extra=_usage_extra(None)
    )
    return _result(prompt, generation, usage_extra)


@dataclass(frozen=True)
class Asked:
    """What a prompt is built from: the question, the turns before it, the summary that stands for older ones."""

    question: str
    history: list[Turn]
    summary: str | None
    max_tokens: int


def from_payload(payload: dict[str, Any], *, history_limit: int, max_tokens: int) -> Asked:
    """A conversation in the job's payload: ``messages`` (``{"role", "content"}``, oldest first; the last is the
    user's question, ``system`` ones are dropped: the platform's instructions lead the prompt), and optionally
    ``max_tokens`` (at most the operator's ``max_tokens``)."""
    turns = [Turn(m["role"], m["content"]) for m in payload["messages"] if m["role"] in ("user", "assistant")]
    if not turns or turns[-1].role != "user":
        raise InputRejected("the last message must be the user's")
    history = turns[:-1][-history_limit:] if history_limit > 0 else []
    wanted = payload.get("max_tokens")
    return Asked(turns[-1].content, history, None, min(wanted, max_tokens) if wanted else max_tokens)


def _generate(
    ctx: JobContext,
    asked: Asked,
    *,
    engine: Engine,
    embedder: Embedder,
    llm: LLM,
    settings: Settings,
    extra: dict[str, int],
    on_partial: Callable[[Prompt, Generation, dict[str, int]], object] | None = None,
    searchable: bool | None = None,
    attribute_sources: bool = False,
) -> tuple[Prompt, Generation, dict[str, int]]:
    """Retrieve, build the prompt and stream the answer (every piece a ``token`` event). ``on_partial`` keeps
    what was generated when the generation is cancelled or breaks."""
    # No turn at the LLM now: say so before the retrieval, which a job sent again to wait for one would redo.
    llm.check(ctx.tenant_id)
    # Before the first token, progress goes to the event stream only (each row write is on the path to it), and
    # the events of one moment go in one round trip.
    searched: list[bool] = []
    hits = retrieve(
        ctx,
        engine,
        embedder,
        query=asked.question,
        top_k=settings.chat_top_k,
        scope=scope(ctx.payload),
        searching=lambda: searched.append(True),
        searchable=searchable,
    )
    prompt = build(
        question=asked.question,
        hits=hits,
        history=asked.history,
        summary=asked.summary,
        budget=settings.chat_prompt_tokens,
    )
    usage_extra = {**extra, "prompt_tokens_estimate": prompt.tokens, "embedding_tokens": approx_tokens(asked.question)}
    ctx.check_cancelled()

    ctx.publish(
        ([] if searched else [_RETRIEVING])
        + [
            (EventType.PROGRESS, {"stage": "retrieve", "done": 1, "total": 1}),
            (EventType.SOURCES, {"sources": cite(prompt.sources)}),
            (EventType.PROGRESS, {"stage": "generate", "done": 0, "total": asked.max_tokens}),
        ]
    )
    generation = Generation()
    started = time.monotonic()
    try:
        waited = llm.stream(
            prompt.messages,
            tenant_id=ctx.tenant_id,
            job=ctx,
            max_tokens=asked.max_tokens,
            into=generation,
            on_text=lambda piece: ctx.emit(EventType.TOKEN, {"text": piece}),
        )
    except (Cancelled, JobFailed):
        if generation.text and on_partial is not None:
            on_partial(prompt, generation, usage_extra)
        raise
    if attribute_sources:
        _cite_what_it_draws_on(ctx, asked.question, prompt, generation)
    ctx.progress("generate", generation.chunks, generation.chunks)
    logger.info(
        "job_id=%s answered tokens=%d in %.2f s (waited %.2f s for a turn)",
        ctx.job_id,
        generation.chunks,
        time.monotonic() - started,
        waited,
    )
    return prompt, generation, usage_extra


_RETRIEVING = (EventType.PROGRESS, {"stage": "retrieve", "done": 0, "total": 1})


def _cite_what_it_draws_on(ctx: JobContext, question: str, prompt: Prompt, generation: Generation) -> None:
    """An answer that cites none of its sources ends with the number of the one it draws on, when one is found
    in the sources as the prompt gave them (``chat.attribution``): a last ``token`` event, so the streamed text
    and the saved one stay the same. Only a session's answer, whose sources its reader gets with it (the
    OpenAI-compatible route's answer carries none)."""
    if not prompt.sources or cited_numbers(generation.text):
        return
    n = attribute(generation.text, question, prompt.texts)
    if n is None:
        return
    marker = f" [{n}]"
    ctx.emit(EventType.TOKEN, {"text": marker})
    generation.text += marker


def retrieve(
    ctx: JobContext,
    engine: Engine,
    embedder: Embedder,
    *,
    query: str,
    top_k: int,
    scope: Scope,
    searching: Callable[[], object] = lambda: None,
    searchable: bool | None = None,
) -> list[Hit]:
    """The question's sources: nothing, without embedding it, when the tenant (or the scope) has no chunk of
    the embedder's model; else its embedding, then the search, announced first (the ``retrieve`` 0 progress
    event; ``searching`` is called then: else the caller sends that event with its next ones). A cancel is seen
    between the steps, and cancels the search's statement while it runs (``ctx.stopped_error`` is raised).
    ``searchable``: whether the tenant has chunks, when the caller has looked already."""
    if top_k <= 0 or searchable is False:
        return []
    with engine.connect() as conn:
        if searchable is None and not repo.has_chunks(conn, tenant_id=ctx.tenant_id, model=embedder.model):
            return []
        if not scope.everything and not in_scope(conn, tenant_id=ctx.tenant_id, scope=scope).chunks:
            return []
        ctx.check_cancelled()
        ctx.publish([_RETRIEVING])
        searching()
        vector = embedder.embed([query])[0]
        ctx.check_cancelled()
        with _cancels_statement(ctx, conn):
            return search(
                conn,
                tenant_id=ctx.tenant_id,
                query=query,
                query_vector=vector,
                model=embedder.model,
                top_k=top_k,
                scope=scope,
            )


@contextlib.contextmanager
def _cancels_statement(ctx: JobContext, conn: Connection) -> Iterator[None]:
    """While inside, a cancel of the job cancels the statement ``conn`` runs (PostgreSQL's cancel request), and
    the error it ends with is the job's stop. Never after: the connection then goes back to the pool."""
    raw = conn.connection.driver_connection
    lock = threading.Lock()
    armed = True

    def cancel() -> None:
        with lock:
            if armed and raw is not None:
                try:
                    raw.cancel_safe(timeout=CANCEL_TIMEOUT)
                except Exception:  # boundary: the statement then ends on its own
                    logger.warning("job_id=%s the search was not cancelled", ctx.job_id, exc_info=True)

    forget = ctx.on_cancel(cancel)
    try:
        yield
    except DBAPIError as exc:
        if ctx.cancelled.is_set():
            raise ctx.stopped_error() from exc
        raise
    finally:
        with lock:
            armed = False
        forget()


def _result(prompt: Prompt, generation: Generation, usage_extra: dict[str, int]) -> dict[str, Any]:
    return {
        "answer": generation.text,
        "sources": cite(prompt.sources, generation.text),
        "usage": {**generation.usage, **usage_extra},
        "history_used": prompt.history_used,
        "finish_reason": generation.finish_reason,
    }


def scope(payload: dict[str, Any]) -> Scope:
    """The documents the answer retrieves from: the payload's collections (the message's, or the session's
    binding when it was sent) and metadata filter (validated by the API when it was sent)."""
    try:
        return Scope(
            collection_ids=tuple(uuid.UUID(c) for c in payload.get("collection_ids") or ()),
            filter=tuple(parse_filter(payload.get("filter") or {})),
        )
    except ValueError as exc:
        raise InputRejected(f"the message's retrieval scope is invalid: {exc}") from exc


def _usage_extra(summary: summary_repo.Latest | None) -> dict[str, int]:
    return {
        "summary_version": summary.version if summary else 0,
        # The turns the summary stands for, less the summary itself: what this prompt did not have to carry.
        "summary_tokens_saved": max(summary.tokens_before - summary.tokens_after, 0) if summary else 0,
    }


def load_context(
    conn: Connection, *, tenant_id: uuid.UUID, message_id: uuid.UUID, limit: int, model: str
) -> repo.Context:
    """The question, the session's latest summary older than it, up to ``limit`` turns after that summary, and
    whether the tenant has chunks embedded by ``model``: one statement (``chat.repo.context``)."""
    start = repo.context(conn, tenant_id=tenant_id, message_id=message_id, limit=limit, model=model)
    if start is None:
        raise InputRejected("the message to answer no longer exists (its session was deleted)")
    return start


def _save(
    ctx: JobContext,
    question: repo.Question,
    prompt: Prompt,
    generation: Generation,
    usage_extra: dict[str, int],
    *,
    status: str,
) -> uuid.UUID:
    """Write the answer if this delivery still owns the job; another delivery's answer is never overwritten."""
    with ctx.owned() as conn:
        return repo.save_answer(
            conn,
            question=question,
            tenant_id=ctx.tenant_id,
            job_id=ctx.job_id,
            content=generation.text,
            status=status,
            sources=cite(prompt.sources, generation.text),
            usage={**generation.usage, **usage_extra},
        )


_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
_SLIDES = ("presentation", "powerpoint")
_SHEETS = ("spreadsheet", "excel")


def cited_numbers(text: str) -> set[int]:
    """The source numbers ``text`` cites: ``[2]``, ``[1][3]``, ``[1, 3]``."""
    return {int(n) for group in _CITATION.findall(text) for n in group.split(",")}


def page_kind(content_type: str) -> str:
    """What a chunk's ``page`` counts in a file of this type: slides, sheets, or pages."""
    if any(word in content_type for word in _SLIDES):
        return "slide"
    if any(word in content_type for word in _SHEETS):
        return "sheet"
    return "page"


def cite(hits: list[Hit], answer: str | None = None) -> list[dict[str, Any]]:
    """The prompt's sources as a reader follows them (``[n]`` is ``hits[n - 1]``); with ``answer``, each marked
    ``cited`` or not."""
    numbers = cited_numbers(answer) if answer is not None else set()
    return [
        {
            "n": n,
            "document_id": str(h.document_id),
            "chunk_id": h.chunk_id,
            "score": round(h.score, 6),
            "filename": h.filename,
            "page": h.page,
            "page_kind": page_kind(h.content_type) if h.page is not None else None,
            "ordinal": h.ordinal,
            "text": h.text,
            **({"cited": n in numbers} if answer is not None else {}),
        }
        for n, h in enumerate(hits, start=1)
    ]
