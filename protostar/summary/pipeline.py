"""Summary jobs: a session's rolling summary, and a whole document's summary. Plain and Celery-free: the task
shells call :func:`summarize_session` and :func:`summarize_document` with the job's context and the clients
they use.

A session summary folds the previous summary and the messages since (up to the latest answer) into a new
version that covers up to the last of those messages. Its write is guarded twice: the job must still belong to
this delivery, and ``(session_id, covers_seq)`` is unique, so a redelivered job never writes a second summary
for the same range. A job that fails writes nothing: the previous summary stays in force.

Both make their LLM calls one at a time, each under the shared LLM limits. A call that finds no turn raises
``LLMBusy`` and the job is sent again later (its worker thread serves others meanwhile); the parts finished
before are kept (:mod:`protostar.summary.parts`), so the next delivery makes only the calls left.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Engine

from protostar.errors import InputRejected, LLMFailed
from protostar.jobs.context import JobContext
from protostar.llm.call import LLM
from protostar.llm.stream import Generation
from protostar.llm.tokens import estimate
from protostar.settings import Settings
from protostar.summary import facts, fold, repo
from protostar.summary.parts import Part, Parts

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionSummary:
    session_id: uuid.UUID
    tenant_id: uuid.UUID
    version: int
    covers_seq: int
    content: str
    tokens_before: int  # the whole history this version replaces (cumulative over versions)
    tokens_after: int


def summarize_session(
    ctx: JobContext, *, engine: Engine, llm: LLM, settings: Settings, parts: Parts | None = None
) -> dict[str, Any]:
    session_id = uuid.UUID(ctx.payload["session_id"])
    with engine.connect() as conn:
        if repo.session_owner(conn, session_id=session_id) != ctx.tenant_id:
            raise InputRejected(f"session {session_id} no longer exists")
        previous = repo.latest(conn, session_id=session_id)
        lines = repo.unsummarized(conn, session_id=session_id, after_seq=previous.covers_seq if previous else 0)
    if not lines:
        return {
            "session_id": str(session_id),
            "summary": previous.content if previous else None,
            "version": previous.version if previous else 0,
            "covers_seq": previous.covers_seq if previous else 0,
            "tokens_before": previous.tokens_before if previous else 0,
            "tokens_after": previous.tokens_after if previous else 0,
            "messages": 0,
            "written": False,
        }
    earlier, told = facts.split(previous.content) if previous else ([], "")
    pieces = session_pieces(told, lines)
    turns = pieces[1:] if told else pieces
    retold, calls, reused, usage = _fold(ctx, pieces, fold.SESSION, llm=llm, settings=settings, parts=parts)
    stated = [s for line in lines if line.role == "user" for s in facts.stated(line.content)]
    content = facts.compose(facts.merge(earlier, stated, budget=settings.summary_max_tokens), retold)
    summary = SessionSummary(
        session_id=session_id,
        tenant_id=ctx.tenant_id,
        version=(previous.version if previous else 0) + 1,
        covers_seq=lines[-1].seq,
        content=content,
        tokens_before=(previous.tokens_before if previous else 0) + sum(estimate(t) for t in turns),
        tokens_after=estimate(content),
    )
    written = save_session_summary(ctx, summary)
    if parts is not None:
        parts.clear()
    logger.info(
        "job_id=%s session_id=%s summary v%d covers_seq=%d tokens %d -> %d in %d calls (written=%s)",
        ctx.job_id,
        session_id,
        summary.version,
        summary.covers_seq,
        summary.tokens_before,
        summary.tokens_after,
        calls,
        written,
    )
    result = {k: v for k, v in asdict(summary).items() if k not in ("session_id", "tenant_id", "content")}
    return {
        "session_id": str(session_id),
        "summary": content,
        **result,
        "input_tokens": sum(estimate(p) for p in pieces),
        "messages": len(lines),
        "llm_calls": calls,
        "llm_calls_reused": reused,
        "usage": usage,
        "written": written,
    }


def session_pieces(previous: str, lines: list[repo.Line]) -> list[str]:
    """What the model folds into a session summary: the model's part of the previous summary (its facts are
    carried apart, :mod:`protostar.summary.facts`), then each message since as ``User: ...`` or
    ``Assistant: ...``."""
    earlier = [f"Summary of the conversation so far: {previous}"] if previous else []
    return earlier + [f"{'User' if line.role == 'user' else 'Assistant'}: {line.content}" for line in lines]


def save_session_summary(ctx: JobContext, summary: SessionSummary) -> bool:
    """Write the version if this delivery still owns the job; ``False`` when this range has a summary already."""
    with ctx.owned() as conn:
        return repo.save(conn, **asdict(summary), job_id=ctx.job_id)


def summarize_document(
    ctx: JobContext, *, engine: Engine, llm: LLM, settings: Settings, parts: Parts | None = None
) -> dict[str, Any]:
    document_id = uuid.UUID(ctx.payload["document_id"])
    with engine.connect() as conn:
        chunks = repo.chunk_texts(conn, document_id=document_id, tenant_id=ctx.tenant_id)
    if not chunks:
        raise InputRejected(f"document {document_id} has no ingested text to summarize")
    texts = [text for text, _ in chunks]
    _check_calls(texts, fold.DOCUMENT, settings=settings)
    content, calls, reused, usage = _fold(ctx, texts, fold.DOCUMENT, llm=llm, settings=settings, parts=parts)
    tokens_before = sum(estimate(text) for text, _ in chunks)
    tokens_after = estimate(content)
    with ctx.owned() as conn:
        repo.save_document(
            conn,
            document_id=document_id,
            tenant_id=ctx.tenant_id,
            content=content,
            chunk_count=len(chunks),
            tokens_before=tokens_before,
            tokens_after=tokens_after,
            job_id=ctx.job_id,
        )
    if parts is not None:
        parts.clear()
    logger.info(
        "job_id=%s document_id=%s summarized %d chunks, tokens %d -> %d in %d calls",
        ctx.job_id,
        document_id,
        len(chunks),
        tokens_before,
        tokens_after,
        calls,
    )
    return {
        "document_id": str(document_id),
        "summary": content,
        "tokens_before": tokens_before,
        "tokens_after": tokens_after,
        "chunks": len(chunks),
        "llm_calls": calls,
        "llm_calls_reused": reused,
        "usage": usage,
    }


def _check_calls(pieces: list[str], instructions: str, *, settings: Settings) -> None:
    """Refuse, before the first call, a text that needs more LLM calls than ``summary_max_llm_calls``."""
    budget = fold.text_budget(instructions, settings.chat_prompt_tokens)
    planned = fold.planned_calls(pieces, budget=budget, limit=settings.summary_max_tokens)
    if planned > settings.summary_max_llm_calls:
        raise InputRejected(
            f"the document is too long to summarize: it needs about {planned} LLM calls, above the limit of "
            f"{settings.summary_max_llm_calls} (PROTOSTAR_SUMMARY_MAX_LLM_CALLS)"
        )


def _fold(
    ctx: JobContext, pieces: list[str], instructions: str, *, llm: LLM, settings: Settings, parts: Parts | None
) -> tuple[str, int, int, dict[str, int]]:
    """Map-reduce ``pieces`` into one summary through the LLM (within the shared LLM limits), taking the parts an
    earlier delivery finished from ``parts``: the summary, the calls it took, how many of them were such parts,
    and the tokens used (those parts' included)."""
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    reused = 0

    calls = 0

    def summarize(text: str) -> str:
        nonlocal calls, reused
        ctx.check_cancelled()
        calls += 1
        if calls > settings.summary_max_llm_calls:  # the plan is an upper bound: this is the backstop
            raise InputRejected(
                f"the summary took more than {settings.summary_max_llm_calls} LLM calls "
                "(PROTOSTAR_SUMMARY_MAX_LLM_CALLS)"
            )
        kept = parts.get(instructions, text) if parts is not None else None
        if kept is None:
            generation = Generation()
            llm.stream(
                fold.messages(instructions, text),
                tenant_id=ctx.tenant_id,
                job=ctx,
                max_tokens=settings.summary_max_tokens,
                into=generation,
            )
            if not generation.text.strip():
                raise LLMFailed("the LLM returned an empty summary")
            kept = Part(text=generation.text, usage=dict(generation.usage))
            if parts is not None:
                parts.put(instructions, text, kept)
        else:
            reused += 1
        for key, value in kept.usage.items():
            usage[key] = usage.get(key, 0) + value
        return kept.text

    content, calls = fold.fold(
        pieces,
        budget=fold.text_budget(instructions, settings.chat_prompt_tokens),
        limit=settings.summary_max_tokens,
        summarize=summarize,
        progress=ctx.progress,
    )
    return content, calls, reused, usage
