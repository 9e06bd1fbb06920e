"""Phase 3: recall@5 and MRR@5 of hybrid search (POST /v1/search) on ``qa.jsonl``, next to vector-only and
full-text-only rankings of the same chunks, computed with SQL in this process.

- vector only: exact cosine order (index scans off, so no HNSW approximation), the question embedded by the
  same local model as the API's.
- full text only: Protostar's two tiers, chunks with every word of the question first, then chunks with any
  of its words, each by ``ts_rank_cd``; without the ``FTS_POOL`` bound.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.harness import FULL_TEXT_ONLY, VECTOR_ONLY, JobRun, System
from bench.ingest import corpus


@dataclass
class Corpus:
    """The whole corpus ingested under one tenant: document id → file name, and how the jobs ended."""

    tenant_id: uuid.UUID
    names: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    chunks: int = 0
    seconds: float = 0.0
    runs: dict[str, JobRun] = field(default_factory=dict)  # file name -> its job


@dataclass(frozen=True)
class Score:
    recall: float
    mrr: float
    misses: list[str]


def ingest(system: System, key: str, tenant_id: uuid.UUID) -> Corpus:
    """Upload every corpus document at once (as the ingest tests do) and wait for every job."""
    out = Corpus(tenant_id)
    started = time.perf_counter()
    with system.client(key) as api:
        pending = []
        for path in corpus.documents():
            answer, submitted = system.upload(api, path.name, path.read_bytes())
            pending.append((path.name, str(answer["job_id"]), submitted))
        for name, job_id, submitted in pending:
            run = system.wait(job_id, submitted=submitted, api=api)
            out.runs[name], job = run, run.job
            if job["status"] == "succeeded":
                out.names[str(job["result"]["document_id"])] = name
                out.chunks += int(job["result"]["chunks"])
            else:
                out.failed[name] = str((job.get("error") or {}).get("message"))
    out.seconds = time.perf_counter() - started
    return out


def score(questions: list[corpus.Question], ranked: Callable[[corpus.Question], list[tuple[str, str]]]) -> Score:
    """recall@5 and MRR@5 of a ranking that answers (file name, text) pairs, best first."""
    rrs, misses = [], []
    for q in questions:
        rr = corpus.reciprocal_rank(q, ranked(q)[:5])
        rrs.append(rr)
        if rr == 0:
            misses.append(q.question)
    return Score(sum(1 for r in rrs if r > 0) / len(rrs), sum(rrs) / len(rrs), misses)


def evaluate(system: System, key: str, docs: Corpus, embedder: Any) -> dict[str, Score]:
    from protostar.db.values import vector_literal
    from protostar.search import loose_query

    questions = corpus.questions()
    vectors = embedder.embed([q.question for q in questions])
    vector_of = {q.question: vectors[i] for i, q in enumerate(questions)}
    common = {"tenant": docs.tenant_id, "model": embedder.model, "k": 5}

    def named(rows: list[Any]) -> list[tuple[str, str]]:
        return [(docs.names.get(str(r[0]), "?"), str(r[1])) for r in rows]

    def vector_only(q: corpus.Question) -> list[tuple[str, str]]:
        with system.engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL enable_indexscan = off")
            conn.exec_driver_sql("SET LOCAL enable_bitmapscan = off")
            statement = VECTOR_ONLY.format(dim=int(np.asarray(vector_of[q.question]).size))
            return named(
                conn.exec_driver_sql(statement, {**common, "vector": vector_literal(vector_of[q.question])}).all()
            )

    def full_text_only(q: corpus.Question) -> list[tuple[str, str]]:
        with system.engine.connect() as conn:
            params = {**common, "query": q.question, "loose": loose_query(q.question)}
            return named(conn.exec_driver_sql(FULL_TEXT_ONLY, params).all())

    with system.client(key) as api:

        def hybrid(q: corpus.Question) -> list[tuple[str, str]]:
            response = api.post("/v1/search", json={"query": q.question, "top_k": 5})
            response.raise_for_status()
            return [(docs.names.get(h["document_id"], "?"), h["text"]) for h in response.json()["hits"]]

        return {
            "hybrid": score(questions, hybrid),
            "vector": score(questions, vector_only),
            "full_text": score(questions, full_text_only),
        }
