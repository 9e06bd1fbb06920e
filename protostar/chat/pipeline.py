"""One chat answer: retrieve → prompt (the session's latest summary and only the turns after it) → stream
from the LLM (every piece a ``token`` event) → persist → queue the session's summary once enough is new.

Plain and Celery-free: the task shell calls :func:`answer` with a :class:`JobContext`. A redelivered job
regenerates the answer and rewrites the same message row (one answer per question); its token events start
again after a ``status`` event with the new ``attempt``, so a client restarts the text it shows there.
A cancelled or broken generation keeps what was written so far as a ``partial`` answer.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from protostar.chat import repo
from protostar.chat.llm import Generation
from protostar.chat.prompt import Prompt, Turn, build
from protostar.constants import EventType
from protostar.errors import BrokerUnavailable, Cancelled, InputRejected, JobFailed
from protostar.jobs import repo as jobs_repo
from protostar.search import Hit, retrieve
from protostar.summary import repo as summary_repo
from protostar.summary import submit
from protostar.worker.shell import JobContext

logger = logging.getLogger(__name__)


def answer(ctx: JobContext) -> dict[str, Any]:
    res, settings = ctx.resources, ctx.resources.settings
    message_id = uuid.UUID(ctx.payload["message_id"])
    with res.engine.connect() as conn:
        question, summary, history = load_context(
            conn, tenant_id=ctx.tenant_id, message_id=message_id, limit=settings.chat_history_messages
        )

    # Before the first token, progress goes to the event stream only: each row write is on the path to it.
    ctx.progress("retrieve", 0, 1, persist=False)
    hits = retrieve(
        res.engine, res.embedder, tenant_id=ctx.tenant_id, query=question.content, top_k=settings.chat_top_k
    )
    ctx.progress("retrieve", 1, 1, persist=False)
    prompt = build(
        question=question.content,
        hits=hits,
        history=history,
        summary=summary.content if summary else None,
        budget=settings.chat_prompt_tokens,
    )
    usage_extra = {
        "prompt_tokens_estimate": prompt.tokens,
        "summary_version": summary.version if summary else 0,
        # The turns the summary stands for, less the summary itself: what this prompt did not have to carry.
        "summary_tokens_saved": max(summary.tokens_before - summary.tokens_after, 0) if summary else 0,
    }
    ctx.check_cancelled()

    generation = Generation()
    forget = ctx.on_cancel(generation.close)
    ctx.progress("generate", 0, settings.llm_max_tokens, persist=False)
    started = time.monotonic()
    try:
        with res.llm_limiter.turn(ctx.tenant_id, stop=ctx.cancelled) as waited:
            res.llm.generate(
                prompt.messages,
                generation,
                max_tokens=settings.llm_max_tokens,
                on_text=lambda piece: ctx.emit(EventType.TOKEN, {"text": piece}),
            )
    except (Cancelled, JobFailed):
        if generation.text:
            _save(ctx, question, prompt, generation, usage_extra, status=repo.MessageStatus.PARTIAL)
        raise
    finally:
        forget()
    ctx.progress("generate", generation.chunks, generation.chunks)
    answer_id = _save(ctx, question, prompt, generation, usage_extra, status=repo.MessageStatus.COMPLETE)
    _queue_summary(ctx, question.session_id)
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
    with ctx.resources.engine.begin() as conn:
        if not jobs_repo.lock_owned(conn, job_id=ctx.job_id, attempt=ctx.attempt):
            raise Cancelled("another delivery owns this job now")
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


def _queue_summary(ctx: JobContext, session_id: uuid.UUID) -> None:
    """Once enough of the session is unsummarized, queue its summary. The answer is saved already, so a failure
    here only delays the summary (beat queues it once the messages are stale) and never fails the answer."""
    res = ctx.resources
    try:
        with Session(res.engine, expire_on_commit=False) as session:
            submit.after_answer(
                session,
                dispatcher=res.dispatcher,
                tenant_id=ctx.tenant_id,
                session_id=session_id,
                every=res.settings.summary_every,
            )
    except (BrokerUnavailable, SQLAlchemyError) as exc:
        logger.warning("job_id=%s session_id=%s summary not queued now: %s", ctx.job_id, session_id, exc)


def _sources(hits: list[Hit]) -> list[dict[str, Any]]:
    return [
        {"document_id": str(h.document_id), "chunk_id": h.chunk_id, "score": round(h.score, 6), "n": n}
        for n, h in enumerate(hits, start=1)
    ]
