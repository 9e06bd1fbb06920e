"""Facts kept by summaries.

- *Session*: a 30-turn conversation (``bench.quality.conversation``: a clinic owner telling ten facts in its
  first two thirds) held through the API, each turn waiting for the summary it queued; then one more summary asked
  for (``POST /v1/sessions/{id}/summarize``), so the latest covers every message. Counted: the ten facts'
  keywords in the latest summary. Baseline, same run: the same fold (``protostar.summary.fold``) over the whole
  transcript at once, with llama-server called directly: what one pass keeps, without the rolling.
- *Document*: a generated document's summary (``POST /v1/documents/{id}/summarize``), counted by its six
  facts' answers; baseline: the same fold over its chunks called directly.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from bench.harness import System
from bench.llm import Direct
from bench.quality import conversation
from bench.quality.corpus import Question, normalize


@dataclass(frozen=True)
class Kept:
    summary: str
    kept: list[str]  # the facts' keywords found
    told: int
    baseline: str
    baseline_kept: list[str]


def _found(summary: str, keywords: list[str]) -> list[str]:
    said = normalize(summary)
    return [k for k in keywords if normalize(k) in said]


def session(system: System, key: str, direct: Direct, turns: int = 30) -> Kept:
    keywords = [keyword for _, keyword in conversation.FACTS]
    seen: set[str] = set()
    with system.client(key) as api:
        session_id = str(api.post("/v1/sessions", json={}).json()["session_id"])
        for turn in conversation.turns(turns):
            sent = time.time()
            answer = api.post(f"/v1/sessions/{session_id}/messages", json={"content": turn.text})
            answer.raise_for_status()
            system.wait(answer.json()["job_id"], submitted=sent, api=api, timeout=600)
            for job_id in summary_jobs(system, session_id):
                if job_id not in seen:
                    seen.add(job_id)
                    system.wait(job_id, submitted=time.time(), api=api, timeout=600)
            if turn.n % 10 == 0:
                print(f"    turn {turn.n}/{turns}: {len(seen)} summaries so far", flush=True)
        sent = time.time()
        last = api.post(f"/v1/sessions/{session_id}/summarize")
        last.raise_for_status()
        system.wait(last.json()["job_id"], submitted=sent, api=api, timeout=600)
        summary = str(api.get(f"/v1/sessions/{session_id}").json().get("summary") or "")
    with system.engine.connect() as conn:
        messages = [
            f"{r[0]}: {r[1]}"
            for r in conn.execute(
                text("SELECT role, content FROM messages WHERE session_id = :sid ORDER BY seq"), {"sid": session_id}
            )
        ]
    baseline = _fold(direct, system.settings, messages, "session")
    return Kept(summary, _found(summary, keywords), len(keywords), baseline, _found(baseline, keywords))


def document(
    system: System, key: str, tenant_id: uuid.UUID, document_id: str, questions: list[Question], direct: Direct
) -> Kept:
    from protostar.summary.repo import chunk_texts

    with system.client(key) as api:
        sent = time.time()
        accepted = api.post(f"/v1/documents/{document_id}/summarize")
        accepted.raise_for_status()
        run = system.wait(accepted.json()["job_id"], submitted=sent, api=api, timeout=1800)
        if run.job["status"] != "succeeded":
            raise RuntimeError(f"the document summary ended {run.job['status']}: {run.job.get('error')}")
        summary = str((run.job.get("result") or {}).get("summary") or "")
        if not summary:
            summary = str(api.get(f"/v1/documents/{document_id}").json().get("summary") or "")
    with system.engine.connect() as conn:
        chunks = chunk_texts(conn, document_id=uuid.UUID(document_id), tenant_id=tenant_id)
    baseline = _fold(direct, system.settings, [t for t, _ in chunks], "document")
    return Kept(summary, _found_any(summary, questions), len(questions), baseline, _found_any(baseline, questions))


def _found_any(summary: str, questions: list[Question]) -> list[str]:
    return [q.answers[0] for q in questions if q.stated_in(summary)]


def _fold(direct: Direct, settings: Any, pieces: list[str], kind: str) -> str:
    """The summary the same fold makes over ``pieces`` with llama-server called directly."""
    from protostar.summary import fold

    instructions = fold.SESSION if kind == "session" else fold.DOCUMENT
    texts: list[str] = []

    def summarize(group: str) -> str:
        done = direct.complete(fold.messages(instructions, group), max_tokens=settings.summary_max_tokens)
        texts.append(done.text)
        return done.text

    final, _ = fold.fold(
        pieces,
        budget=fold.text_budget(instructions, settings.chat_prompt_tokens),
        limit=settings.summary_max_tokens,
        summarize=summarize,
    )
    return str(final)


def summary_jobs(system: System, session_id: str) -> list[str]:
    with system.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id FROM jobs WHERE kind = 'summary_session' AND payload->>'session_id' = :sid"),
            {"sid": session_id},
        ).all()
    return [str(r[0]) for r in rows]
