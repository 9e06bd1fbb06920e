"""One chat answer: retrieve → prompt → stream from the LLM (every piece a ``token`` event) → persist.

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

from protostar.chat import repo
from protostar.chat.llm import Generation
from protostar.chat.prompt import Prompt, build
from protostar.constants import EventType
from protostar.errors import Cancelled, InputRejected, JobFailed
from protostar.jobs import repo as jobs_repo
from protostar.search import Hit, retrieve
from protostar.worker.shell import JobContext

logger = logging.getLogger(__name__)


def answer(ctx: JobContext) -> dict[str, Any]:
    res, settings = ctx.resources, ctx.resources.settings
    message_id = uuid.UUID(ctx.payload["message_id"])
    with res.engine.connect() as conn:
        question, history = repo.question_and_history(
            conn, tenant_id=ctx.tenant_id, message_id=message_id, limit=settings.chat_history_messages
        )
    if question is None:
        raise InputRejected("the message to answer no longer exists (its session was deleted)")

    ctx.progress("retrieve", 0, 1)
    hits = retrieve(
        res.engine, res.embedder, tenant_id=ctx.tenant_id, query=question.content, top_k=settings.chat_top_k
    )
    ctx.progress("retrieve", 1, 1)
    prompt = build(question=question.content, hits=hits, history=history, budget=settings.chat_prompt_tokens)
    ctx.check_cancelled()

    generation = Generation()
    forget = ctx.on_cancel(generation.close)
    ctx.progress("generate", 0, settings.llm_max_tokens)
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
            _save(ctx, question, prompt, generation, status=repo.MessageStatus.PARTIAL)
        raise
    finally:
        forget()
    ctx.progress("generate", generation.chunks, generation.chunks)
    answer_id = _save(ctx, question, prompt, generation, status=repo.MessageStatus.COMPLETE)
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
        "usage": generation.usage,
        "finish_reason": generation.finish_reason,
    }


def _save(
    ctx: JobContext, question: repo.Question, prompt: Prompt, generation: Generation, *, status: str
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
            usage={**generation.usage, "prompt_tokens_estimate": prompt.tokens},
        )


def _sources(hits: list[Hit]) -> list[dict[str, Any]]:
    return [
        {"document_id": str(h.document_id), "chunk_id": h.chunk_id, "score": round(h.score, 6), "n": n}
        for n, h in enumerate(hits, start=1)
    ]
