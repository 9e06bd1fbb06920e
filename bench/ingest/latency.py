"""Phase 4: ``protostar.search.search()`` latency with 100,000 chunks in the table, next to a bare pgvector
``ORDER BY embedding <=> q LIMIT 5`` on the same rows, timed alternately from this process.

The rows belong to a tenant of their own (``docs`` document rows of equal size) and are made from the real
chunks of the corpus: each chunk's text with a copy number appended, and its real embedding plus Gaussian
noise (``noise`` per dimension), renormalised, so the vectors cluster as real ones do instead of being
uniformly random. They go in with ``store.replace_chunks`` (COPY) while the HNSW index is dropped, then
``embeddings.index.ensure_vector_index`` rebuilds it (one bulk build is far faster than 100,000 inserts into the graph).
Both queries check out a connection from the same pool (with its pre-ping), as the API's search route does.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import text

from bench.common import pct
from bench.harness import System
from bench.ingest import corpus

logger = logging.getLogger(__name__)

TENANT = "bench-100k"
CTES = ("vec", "every_word", "rare", "some_word", "fts")  # the CTEs of search()'s statement timed from its plan
BARE = """
SELECT id FROM chunks
WHERE tenant_id = %(tenant)s AND embedding_model = {model}
ORDER BY embedding::vector({dim}) <=> %(vector)s::vector({dim})
LIMIT 5
"""


@dataclass
class Latency:
    tenant_id: uuid.UUID
    rows: int
    copy_seconds: float
    index_seconds: float
    protostar_ms: list[float] = field(default_factory=list)
    bare_ms: list[float] = field(default_factory=list)
    query_embed_ms: list[float] = field(default_factory=list)
    short_answers: int = 0  # searches that returned fewer than 5 hits
    server_ms: list[float] = field(default_factory=list)  # EXPLAIN ANALYZE execution time, once per question
    bare_server_ms: list[float] = field(default_factory=list)
    cte_ms: dict[str, list[float]] = field(default_factory=dict)  # Protostar's statement, per CTE
    plans: dict[str, str] = field(default_factory=dict)  # text plans (first question, and the slowest), for the log
    evidence: list[float] = field(default_factory=list)  # per question: 1/rank of the first hit holding its evidence

    def p(self, values: list[float]) -> str:
        return f"{pct(values, 0.5):.2f} / {pct(values, 0.99):.2f}"


def fill(system: System, source_tenant: uuid.UUID, *, rows: int, docs: int, noise: float, model: str) -> Latency:
    """``rows`` chunks under a new tenant, made from ``source_tenant``'s chunks (see the module docstring)."""
    from protostar.auth import ensure_tenant
    from protostar.db.engine import make_sessionmaker
    from protostar.documents.repo import mark_ingested
    from protostar.embeddings.embed import normalize
    from protostar.embeddings.index import ensure_vector_index, index_name
    from protostar.ingest import store
    from protostar.ingest.chunk import Chunk

    texts, tokens, vectors = _source_chunks(system, source_tenant)
    rng = np.random.default_rng(20261123)
    with make_sessionmaker(system.engine).begin() as session:
        tenant_id = ensure_tenant(session, TENANT)
    document_ids = _documents(system, tenant_id, docs)
    index = index_name(model)
    with system.engine.begin() as conn:
        conn.execute(text(f'DROP INDEX IF EXISTS "{index}"'))
    per_doc = rows // docs
    started = time.perf_counter()
    for d, document_id in enumerate(document_ids):
        numbers = range(d * per_doc, (d + 1) * per_doc)
        sources = [n % len(texts) for n in numbers]
        chunks = [
            Chunk(
                ordinal=o,
                text=f"{texts[s]} ({n // len(texts) + 1})",
                page=None,
                element_types=["NarrativeText"],
                token_count=tokens[s],
            )
            for o, (n, s) in enumerate(zip(numbers, sources, strict=True))
        ]
        noisy = normalize(vectors[sources] + rng.normal(0.0, noise, (len(sources), vectors.shape[1])))
        with system.engine.begin() as conn:
            store.replace_chunks(
                conn, document_id=document_id, tenant_id=tenant_id, chunks=chunks, vectors=noisy, model=model
            )
            # As the ingest pipeline does: the search sizes a tenant by its documents' chunk counts (a tenant
            # counted at 0 would be ranked exactly, reading every row, instead of through the HNSW index).
            mark_ingested(conn, document_id=document_id, chunk_count=len(chunks), page_count=None, model=model)
    copy_seconds = time.perf_counter() - started
    with system.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ALTER SYSTEM SET maintenance_work_mem = '1GB'"))
        conn.execute(text("SELECT pg_reload_conf()"))
    started = time.perf_counter()
    ensure_vector_index(system.engine, model=model, dim=vectors.shape[1])
    index_seconds = time.perf_counter() - started
    with system.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ALTER SYSTEM RESET maintenance_work_mem"))
        conn.execute(text("SELECT pg_reload_conf()"))
        conn.execute(text("VACUUM ANALYZE chunks"))
    return Latency(tenant_id, per_doc * docs, copy_seconds, index_seconds)


def _source_chunks(system: System, tenant_id: uuid.UUID) -> tuple[list[str], list[int], np.ndarray]:
    """The tenant's chunks in order: texts, token counts, embeddings (one row each)."""
    with system.engine.connect() as conn:
        source = conn.execute(
            text("SELECT text, embedding::text, token_count FROM chunks WHERE tenant_id = :t ORDER BY id"),
            {"t": tenant_id},
        ).all()
    texts = [str(r[0]) for r in source]
    tokens = [int(r[2]) for r in source]
    vectors = np.array([np.array(r[1][1:-1].split(","), dtype=np.float32) for r in source])
    return texts, tokens, vectors


def _documents(system: System, tenant_id: uuid.UUID, docs: int) -> list[uuid.UUID]:
    """``docs`` document rows (no object, no ingest job) for the synthetic chunks to belong to."""
    document_ids = [uuid.uuid4() for _ in range(docs)]
    with system.engine.begin() as conn:
        for i, document_id in enumerate(document_ids):
            conn.execute(
                text(
                    "INSERT INTO documents (id, tenant_id, filename, content_type, size, sha256, object_key) "
                    "VALUES (:id, :t, :name, 'text/plain', 0, :sha, 'none')"
                ),
                {"id": document_id, "t": tenant_id, "name": f"synthetic-{i}.txt", "sha": _sha(document_id)},
            )
    return document_ids


def _sha(document_id: uuid.UUID) -> str:
    return hashlib.sha256(document_id.bytes).hexdigest()


def measure(system: System, result: Latency, embedder: Any, *, reps: int, warmup: int = 2) -> None:
    """``reps`` rounds over the questions: Protostar's search, then the bare query, for each question."""
    from protostar.db.values import vector_literal
    from protostar.search import search

    tenant_id = result.tenant_id
    questions = [q.question for q in corpus.questions()]
    vectors = []
    for q in questions:
        started = time.perf_counter()
        vectors.append(embedder.embed([q])[0])
        result.query_embed_ms.append((time.perf_counter() - started) * 1000)
    dim = len(vectors[0])
    bare = BARE.format(model=_literal(embedder.model), dim=dim)
    for round_ in range(warmup + reps):
        for q, question, vector in zip(corpus.questions(), questions, vectors, strict=True):
            started = time.perf_counter()
            with system.engine.connect() as conn:
                hits = search(
                    conn, tenant_id=tenant_id, query=question, query_vector=vector, model=embedder.model, top_k=5
                )
            middle = time.perf_counter()
            with system.engine.connect() as conn:
                conn.exec_driver_sql(bare, {"tenant": tenant_id, "vector": vector_literal(vector)}).all()
            ended = time.perf_counter()
            if round_ >= warmup:
                result.protostar_ms.append((middle - started) * 1000)
                result.bare_ms.append((ended - middle) * 1000)
                result.short_answers += len(hits) < 5
            if round_ == warmup + reps - 1:
                result.evidence.append(_evidence_rank(q, [h.text for h in hits]))
    for i, (question, vector) in enumerate(zip(questions, vectors, strict=True)):
        ours, theirs = explain(system, tenant_id, question, vector, embedder.model, bare, json=True)
        result.server_ms.append(float(ours["Execution Time"]))
        result.bare_server_ms.append(float(theirs["Execution Time"]))
        for name, ms in cte_times(ours["Plan"]).items():
            result.cte_ms.setdefault(name, []).append(ms)
        if i == 0:
            text_ours, text_theirs = explain(system, tenant_id, question, vector, embedder.model, bare, json=False)
            result.plans = {"protostar": text_ours, "bare": text_theirs}
    slowest = int(np.argmax(result.server_ms))
    if slowest:
        text_ours, _ = explain(
            system, tenant_id, questions[slowest], vectors[slowest], embedder.model, bare, json=False
        )
        result.plans[f"protostar, the slowest question ({questions[slowest]!r})"] = text_ours


def _evidence_rank(question: corpus.Question, texts: list[str]) -> float:
    """1 / rank of the first of ``texts`` that holds the question's evidence (any copy of the answer), or 0."""
    for rank, body in enumerate(texts[:5], start=1):
        if any(e in body for e in question.evidence):
            return 1 / rank
    return 0.0


def explain(
    system: System, tenant_id: uuid.UUID, question: str, vector: Any, model: str, bare: str, *, json: bool
) -> tuple[Any, Any]:
    """EXPLAIN ANALYZE of both queries for one question: JSON (the top object), or text with long lines cut."""
    from protostar.db.values import vector_literal
    from protostar.search import configure_scan, search_statement

    prefix = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " if json else "EXPLAIN (ANALYZE, BUFFERS) "
    with system.engine.connect() as conn:
        configure_scan(conn, ef_search=80)  # what search() sets for candidates=50, ef_search=80
        statement, params = search_statement(
            conn,
            tenant_id=tenant_id,
            query=question,
            vector=np.asarray(vector, dtype=np.float32),
            model=model,
            top_k=5,
            candidates=50,
        )
        ours = conn.exec_driver_sql(prefix + statement, params).all()
    with system.engine.connect() as conn:
        theirs = conn.exec_driver_sql(prefix + bare, {"tenant": tenant_id, "vector": vector_literal(vector)}).all()
    if json:
        return ours[0][0][0], theirs[0][0][0]
    return _text(ours), _text(theirs)


def cte_times(plan: dict[str, Any]) -> dict[str, float]:
    """Actual total time (ms) of each CTE of a JSON plan, e.g. ``{"vec": 0.6, "fts": 9.6, ...}``."""
    out: dict[str, float] = {}
    for node in plan.get("Plans", []):
        name = str(node.get("Subplan Name", ""))
        if name.startswith("CTE "):
            out[name[4:]] = float(node["Actual Total Time"])
        out.update(cte_times(node))
    return out


def _text(rows: list[Any]) -> str:
    return "\n".join(r[0] if len(r[0]) < 300 else r[0][:300] + "…" for r in rows)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
