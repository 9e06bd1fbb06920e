"""Retrieval and answers over the generated documents (``bench.quality.corpus``).

Retrieval: each question's ranking by Protostar's hybrid search (``POST /v1/search``), by exact cosine alone
(vector only) and by the two full-text tiers alone (``bench.ingest.retrieval``'s statements), scored
recall@1, recall@5 and MRR@5: a hit answers when it is a chunk of the question's document that states the fact.

Answers, three ways with the same model and the same prompt builder (``protostar.chat.prompt.build``):

- *retrieved*: the question asked through the API in a fresh session (``POST /v1/sessions/{id}/messages``):
  the worker retrieves, prompts, and streams the answer; its sources come back with the job;
- *gold* (the ceiling): llama-server called directly with the gold passage as the only source;
- *none* (the floor): llama-server called directly with no source.

An answer *states the fact* when it holds one of the fact's strings (both normalized: case, quotes, dashes,
thousands separators); an answer that does not and says the sources lack it is a *refusal*, counted apart.
Citations: an answer that states the fact is *cited right* when one of the sources it cites (``[n]``) is a
chunk of the question's document that holds the fact.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.harness import FULL_TEXT_ONLY, VECTOR_ONLY, System
from bench.llm import Direct
from bench.quality.corpus import Question

REFUSAL = re.compile(
    r"(do(es)?n[o']t|do(es)? not|cannot|can't|unable to|no) (contain|mention|provide|include|have|find|know|say|"
    r"specify|state|information|answer|details?)|not (mentioned|provided|specified|stated|available|given|found|"
    r"included|clear)|i'm sorry|i am sorry|i apologi[sz]e|"
    r"keine (angabe|information)|nicht (enthalten|erwähnt|angegeben)",
    re.IGNORECASE,
)


@dataclass
class Ranking:
    ranks: dict[str, int] = field(default_factory=dict)  # question -> rank (1-based) of the first answering hit, 0 none

    def recall(self, at: int) -> float:
        return sum(1 for r in self.ranks.values() if 0 < r <= at) / len(self.ranks)

    def mrr(self, at: int = 5) -> float:
        return sum(1 / r for r in self.ranks.values() if 0 < r <= at) / len(self.ranks)


def rank_of(q: Question, hits: list[tuple[str, str]]) -> int:
    for n, (filename, text) in enumerate(hits, start=1):
        if q.answered_by(filename, text):
            return n
    return 0


def retrieval(
    system: System, key: str, tenant_id: uuid.UUID, names: dict[str, str], questions: list[Question], embedder: Any
) -> dict[str, Ranking]:
    """Hybrid, vector-only and full-text-only rankings (top 5) of every question."""
    from protostar.db.values import vector_literal
    from protostar.search import loose_query

    vectors = embedder.embed([q.question for q in questions])
    common = {"tenant": tenant_id, "model": embedder.model, "k": 5}
    out = {"hybrid": Ranking(), "vector": Ranking(), "full_text": Ranking()}

    def named(rows: list[Any]) -> list[tuple[str, str]]:
        return [(names.get(str(r[0]), "?"), str(r[1])) for r in rows]

    with system.client(key) as api:
        for i, q in enumerate(questions):
            response = api.post("/v1/search", json={"query": q.question, "top_k": 5})
            response.raise_for_status()
            hits = [(h["filename"], h["text"]) for h in response.json()["hits"]]
            out["hybrid"].ranks[q.question] = rank_of(q, hits)
            with system.engine.begin() as conn:
                conn.exec_driver_sql("SET LOCAL enable_indexscan = off")
                conn.exec_driver_sql("SET LOCAL enable_bitmapscan = off")
                dim = int(np.asarray(vectors[i]).size)
                rows = conn.exec_driver_sql(
                    VECTOR_ONLY.format(dim=dim), {**common, "vector": vector_literal(vectors[i])}
                ).all()
            out["vector"].ranks[q.question] = rank_of(q, named(rows))
            with system.engine.connect() as conn:
                params = {**common, "query": q.question, "loose": loose_query(q.question)}
                rows = conn.exec_driver_sql(FULL_TEXT_ONLY, params).all()
            out["full_text"].ranks[q.question] = rank_of(q, named(rows))
    return out


@dataclass(frozen=True)
class Answer:
    text: str
    correct: bool
    refused: bool
    seconds: float
    completion_tokens: int
    in_prompt: bool | None = None  # retrieved: a source in the prompt held the fact
    cited: bool | None = None  # retrieved: the answer cites at least one source
    cited_right: bool | None = None  # retrieved: one of the cited sources holds the fact


def judge(q: Question, text: str) -> tuple[bool, bool]:
    correct = q.stated_in(text)
    return correct, (not correct and bool(REFUSAL.search(text)))


def ask_path(system: System, api: Any, q: Question) -> Answer:
    """The question through the API, in a fresh session, as a caller asks it."""
    session_id = api.post("/v1/sessions", json={}).json()["session_id"]
    sent = time.time()
    accepted = api.post(f"/v1/sessions/{session_id}/messages", json={"content": q.question})
    accepted.raise_for_status()
    run = system.wait(accepted.json()["job_id"], submitted=sent, api=api, timeout=600)
    if run.job["status"] != "succeeded":
        raise RuntimeError(f"{q.question!r} ended {run.job['status']}: {run.job.get('error')}")
    result = run.job["result"]
    sources = result.get("sources") or []
    holding = [s for s in sources if q.answered_by(str(s.get("filename")), str(s.get("text")))]
    cited = [s for s in sources if s.get("cited")]
    correct, refused = judge(q, result["answer"])
    return Answer(
        result["answer"],
        correct,
        refused,
        run.finished - run.started,
        int((result.get("usage") or {}).get("completion_tokens", 0)),
        in_prompt=bool(holding),
        cited=bool(cited),
        cited_right=any(s in holding for s in cited),
    )


def ask_direct(direct: Direct, settings: Any, q: Question, *, gold: bool) -> Answer:
    """The same prompt the worker builds, with the gold passage as the only source (or none), sent directly."""
    from protostar.chat import prompt
    from protostar.search import Hit

    hits = [Hit(uuid.uuid4(), 0, q.gold, 1.0, q.page, q.document)] if gold else []
    built = prompt.build(question=q.question, hits=hits, history=[], budget=settings.chat_prompt_tokens)
    done = direct.complete(built.messages, max_tokens=settings.llm_max_tokens)
    correct, refused = judge(q, done.text)
    return Answer(done.text, correct, refused, done.seconds, done.completion_tokens)


@dataclass
class Answers:
    by: dict[str, list[Answer]] = field(default_factory=dict)  # condition -> answers, questions' order

    def share(self, condition: str, pick: Callable[[Answer], bool | None]) -> float:
        answers = self.by[condition]
        return sum(1 for a in answers if pick(a)) / len(answers)


def answer_all(system: System, key: str, questions: list[Question], direct: Direct) -> Answers:
    """Every question three ways; the conditions take turns question by question (the machine's noise falls on
    all three alike)."""
    out = Answers({"retrieved": [], "gold": [], "none": []})
    with system.client(key) as api:
        for n, q in enumerate(questions, start=1):
            out.by["retrieved"].append(ask_path(system, api, q))
            out.by["gold"].append(ask_direct(direct, system.settings, q, gold=True))
            out.by["none"].append(ask_direct(direct, system.settings, q, gold=False))
            if n % 10 == 0:
                print(f"    {n}/{len(questions)} questions asked three ways", flush=True)
    return out
