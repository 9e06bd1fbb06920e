"""One chat answer: retrieve → prompt (the session's latest summary and only the turns after it) → a turn at
the LLM (none now: ``LLMBusy``, and the shell sends the job again later) → stream from the LLM (every piece a
``token`` event) → persist. (The task shell then queues the session's summary once enough is new.)

Plain and Celery-free: the task shell calls :func:`answer` with the job's context and the clients it uses. A
redelivered job regenerates the answer and rewrites the same message row (one answer per question); its token
events start again after a ``status`` event with the new ``attempt``, so a client restarts the text it shows there.
A cancelled or broken generation keeps what was written so far as a ``partial`` answer.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from sqlalchemy import Connection, Engine

from protostar.chat import repo
from protostar.chat.prompt import Prompt, Turn, build
from protostar.constants import EventType, MessageStatus
from protostar.embeddings.embed import Embedder
from protostar.embeddings.tokens import approx_tokens
from protostar.errors import Cancelled, InputRejected, JobFailed
from protostar.jobs.context import JobContext
from protostar.llm.call import LLM
from protostar.llm.stream import Generation
from protostar.search import Hit, retrieve
from protostar.settings import Settings
from protostar.summary import repo as summary_repo

logger = logging.getLogger(__name__)


def answer(ctx: JobContext, *, engine: Engine, embedder: Embedder, llm: LLM, settings: Settings) -> dict[str, Any]:
    message_id = uuid.UUID(ctx.payload["message_id"])
    with engine.connect() as conn:
        question, summary, history = load_context(
            conn, tenant_id=ctx.tenant_id, message_id=message_id, limit=settings.chat_history_messages
        )

    # No turn at the LLM now: say so before the retrieval, which a job sent again to wait for one would redo.
    llm.check(ctx.tenant_id)
    # Before the first token, progress goes to the event stream only: each row write is on the path to it.
    ctx.progress("retrieve", 0, 1, persist=False)
    hits = retrieve(engine, embedder, tenant_id=ctx.tenant_id, query=question.content, top_k=settings.chat_top_k)
    ctx.progress("retrieve", 1, 1, persist=False)
    prompt = build(
        question=question.content,
        hits=hits,
        history=history,
        summary=summary.content if summary else None,
        budget=settings.chat_prompt_tokens,
    )
    usage_extra = _usage_extra(question.content, prompt, summary)
    ctx.check_cancelled()

    generation = Generation()
    ctx.progress("generate", 0, settings.llm_max_tokens, persist=False)
    started = time.monotonic()
    try:
        waited = llm.stream(
            prompt.messages,
            tenant_id=ctx.tenant_id,
            job=ctx,
            max_tokens=settings.llm_max_tokens,
            into=generation,
            on_text=lambda piece: ctx.emit(EventType.TOKEN, {"text": piece}),
        )
    except (Cancelled, JobFailed):
        if generation.text:
            _save(ctx, question, prompt, generation, usage_extra, status=MessageStatus.PARTIAL)
        raise
    ctx.progress("generate", generation.chunks, generation.chunks)
    answer_id = _save(ctx, question, prompt, generation, usage_extra, status=MessageStatus.COMPLETE)
    took = time.monotonic() - started
    logger.info(
        "job_id=%s answered message_id=%s tokens=%d in %.2f s (waited %.2f s for a turn)",
        ctx.job_id,
        question.id,
        generation.chunks,
        took,
        waited,
    )
    return {
        "message_id": str(answer_id),
        "answer": generation.text,
        "sources": _sources(prompt.sources),
        "usage": {**generation.usage, **usage_extra},
        "history_used": prompt.history_used,
        "finish_reason": generation.finish_reason,
    }


def _usage_extra(question: str, prompt: Prompt, summary: summary_repo.Latest | None) -> dict[str, int]:
    return {
        "embedding_tokens": approx_tokens(question),  # the question, embedded for the retrieval
        "prompt_tokens_estimate": prompt.tokens,
        "summary_version": summary.version if summary else 0,
        # The turns the summary stands for, less the summary itself: what this prompt did not have to carry.
        "summary_tokens_saved": max(summary.tokens_before - summary.tokens_after, 0) if summary else 0,
    }


def load_context(
    conn: Connection, *, tenant_id: uuid.UUID, message_id: uuid.UUID, limit: int
) -> tuple[repo.Question, summary_repo.Latest | None, list[Turn]]:
    """The question, the session's latest summary older than it, and up to ``limit`` turns after that summary."""
    question = repo.question(conn, tenant_id=tenant_id, message_id=message_id)
    if question is None:
        raise InputRejected("the message to answer no longer exists (its session was deleted)")
    summary = summary_repo.latest(conn, session_id=question.session_id, before_seq=question.seq)
    history = repo.history(conn, question=question, limit=limit, after_seq=summary.covers_seq if summary else None)
    return question, summary, history


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
            sources=_sources(prompt.sources),
            usage={**generation.usage, **usage_extra},
        )


def _sources(hits: list[Hit]) -> list[dict[str, Any]]:
    return [
        {"document_id": str(h.document_id), "chunk_id": h.chunk_id, "score": round(h.score, 6), "n": n}
        for n, h in enumerate(hits, start=1)
    ]
