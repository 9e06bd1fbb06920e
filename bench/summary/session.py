"""Phase 1: a long conversation held through the API, as a user holds it, with the summaries the system makes
on its own; then each turn's prompt against the prompt the whole history would have made, and each summary
job against the same fold called directly.

Every turn waits for the summary job its answer queued (a person reads the answer before writing again), so
each answer sees the summary its predecessor triggered, and the figures do not depend on the machine's speed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from bench.harness import JobRun, System
from bench.llm import Direct
from bench.summary import conversation


@dataclass
class TurnResult:
    n: int
    question: str
    message_id: str
    prompt_tokens: int  # as llama-server counted the prompt the worker sent
    completion_tokens: int
    summary_version: int
    history_used: int
    fact: str | None
    full: int = 0  # the prompt with the whole history and no summary, counted by llama-server
    window: int = 0  # the prompt with only the latest turns and no summary
    rebuilt: int = 0  # the prompt that was sent, rebuilt from the database, counted by llama-server


@dataclass(frozen=True)
class SummaryRow:
    version: int
    covers_seq: int
    content: str
    job_id: str


@dataclass
class FoldRun:
    """The same fold as a summary job, with llama-server called directly."""

    seconds: float
    calls: int
    completion_tokens: int
    prompt_tokens: int


@dataclass
class Conversation:
    session_id: str
    turns: list[TurnResult] = field(default_factory=list)
    summary_runs: list[JobRun] = field(default_factory=list)
    summaries: list[SummaryRow] = field(default_factory=list)
    direct: dict[str, FoldRun] = field(default_factory=dict)  # summary job id -> the same fold, direct
    messages: list[tuple[int, str, str, str]] = field(default_factory=list)  # seq, id, role, content

    def summary_tokens(self) -> int:
        """Prompt and completion tokens the summary jobs spent, as llama-server counted them."""
        total = 0
        for run in self.summary_runs:
            usage = (run.job.get("result") or {}).get("usage") or {}
            total += int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0))
        return total


def hold(system: System, key: str, count: int, direct: Direct) -> Conversation:
    """``count`` turns in one session; each answer followed on its event stream, then any summary it queued,
    then that summary's fold again with llama-server called directly."""
    seen: set[str] = set()
    with system.client(key) as api:
        session_id = str(api.post("/v1/sessions", json={}).json()["session_id"])
        talk = Conversation(session_id)
        for turn in conversation.turns(count):
            sent = time.time()
            answer = api.post(f"/v1/sessions/{session_id}/messages", json={"content": turn.text})
            answer.raise_for_status()
            run = system.wait(answer.json()["job_id"], submitted=sent, api=api, timeout=600)
            if run.job["status"] != "succeeded":
                raise RuntimeError(f"turn {turn.n} ended {run.job['status']}: {run.job.get('error')}")
            result = run.job["result"]
            usage = result["usage"]
            talk.turns.append(
                TurnResult(
                    n=turn.n,
                    question=turn.text,
                    message_id=str(answer.json()["message_id"]),
                    prompt_tokens=int(usage["prompt_tokens"]),
                    completion_tokens=int(usage["completion_tokens"]),
                    summary_version=int(usage.get("summary_version", 0)),
                    history_used=int(result["history_used"]),
                    fact=turn.fact,
                )
            )
            for job_id in summary_jobs(system, session_id):
                if job_id not in seen:
                    seen.add(job_id)
                    run = system.wait(job_id, submitted=time.time(), api=api, timeout=600)
                    talk.summary_runs.append(run)
                    if run.job["status"] == "succeeded":
                        load(system, talk)
                        fold_again(
                            talk, run, direct, system.settings
                        )  # right after the job, on the machine as the job found it
            if turn.n % 10 == 0:
                print(f"    turn {turn.n}/{count}: {len(talk.summary_runs)} summaries so far", flush=True)
    load(system, talk)
    return talk


def summary_jobs(system: System, session_id: str) -> list[str]:
    with system.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id FROM jobs WHERE kind = 'summary_session' AND payload->>'session_id' = :sid "
                "ORDER BY created_at"
            ),
            {"sid": session_id},
        ).all()
    return [str(r[0]) for r in rows]


def load(system: System, talk: Conversation) -> None:
    with system.engine.connect() as conn:
        talk.messages = [
            (int(r[0]), str(r[1]), r[2], r[3])
            for r in conn.execute(
                text("SELECT seq, id, role, content FROM messages WHERE session_id = :sid ORDER BY seq"),
                {"sid": talk.session_id},
            )
        ]
        talk.summaries = [
            SummaryRow(int(r[0]), int(r[1]), r[2], str(r[3]))
            for r in conn.execute(
                text(
                    "SELECT version, covers_seq, content, job_id FROM summaries "
                    "WHERE session_id = :sid ORDER BY version"
                ),
                {"sid": talk.session_id},
            )
        ]


def count_prompts(talk: Conversation, direct: Direct, settings: Any) -> None:
    """For every turn, llama-server's count of three prompts for the same question: the whole history, the
    latest turns alone, and the one the worker sent (rebuilt from the database, to check the method)."""
    from protostar.chat.prompt import Turn, build

    seq_of = {message_id: seq for seq, message_id, _, _ in talk.messages}
    versions = {s.version: s for s in talk.summaries}
    limit, budget = settings.chat_history_messages, settings.chat_prompt_tokens
    for turn in talk.turns:
        seq = seq_of[turn.message_id]
        before = [(s, Turn(role, content)) for s, _, role, content in talk.messages if s < seq and content]
        history = [t for _, t in before]
        whole = build(question=turn.question, hits=[], history=history, budget=10**9)
        turn.full = direct.count(whole.messages)
        latest = build(question=turn.question, hits=[], history=history[-limit:] if limit else [], budget=budget)
        turn.window = direct.count(latest.messages)
        summary = versions.get(turn.summary_version)
        after = [t for s, t in before if summary is None or s > summary.covers_seq]
        sent = build(
            question=turn.question,
            hits=[],
            history=after[-limit:] if limit else [],
            summary=summary.content if summary else None,
            budget=budget,
        )
        turn.rebuilt = direct.count(sent.messages)


def fold_again(talk: Conversation, run: JobRun, direct: Direct, settings: Any) -> None:
    """The fold of the summary ``run`` wrote (the previous summary and the messages it covers), with
    llama-server called directly instead of through a job; a one-call fold generates as many tokens as the
    job's call did, so the two do the same work."""
    from protostar.summary import facts, fold
    from protostar.summary.pipeline import session_pieces
    from protostar.summary.repo import Line

    job_id = str(run.job["id"])
    written = [s for s in talk.summaries if s.job_id == job_id]
    if not written:
        return  # nothing new to fold (the job found no unsummarized messages)
    summary = written[0]
    earlier = [s for s in talk.summaries if s.version < summary.version]
    previous = earlier[-1] if earlier else None
    after = previous.covers_seq if previous else 0
    lines = [
        Line(seq, role, text) for seq, _, role, text in talk.messages if after < seq <= summary.covers_seq and text
    ]
    told = facts.split(previous.content)[1] if previous else ""
    result = run.job.get("result") or {}
    exactly = int(result["usage"]["completion_tokens"]) if result.get("llm_calls") == 1 else None
    talk.direct[job_id] = run_fold(direct, settings, session_pieces(told, lines), fold.SESSION, exactly=exactly)


def run_fold(
    direct: Direct, settings: Any, pieces: list[str], instructions: str, *, exactly: int | None = None
) -> FoldRun:
    """``protostar.summary.fold.fold`` as the job runs it, each call straight to llama-server. ``exactly``: a
    one-call fold generates that many tokens, as many as the job's call did (sampling makes lengths vary)."""
    from protostar.summary import fold

    completion = prompt = 0

    def summarize(text: str) -> str:
        nonlocal completion, prompt
        messages = fold.messages(instructions, text)
        if exactly is None:
            done = direct.complete(messages, max_tokens=settings.summary_max_tokens)
        else:
            done = direct.complete(messages, max_tokens=exactly, exactly=True)
        completion += done.completion_tokens
        prompt += done.prompt_tokens
        return done.text

    started = time.perf_counter()
    _, calls = fold.fold(
        pieces,
        budget=fold.text_budget(instructions, settings.chat_prompt_tokens),
        limit=settings.summary_max_tokens,
        summarize=summarize,
    )
    return FoldRun(time.perf_counter() - started, calls, completion, prompt)


def llm_seconds(run: JobRun) -> float:
    """Time inside the job from the first fold call's start to the last one's end (its progress events)."""
    stamps = [at for at, kind, data in run.events if kind == "progress" and data.get("stage") in FOLD_STAGES]
    return max(stamps) - min(stamps) if stamps else 0.0


FOLD_STAGES = {"summarize", "map", "reduce"}
