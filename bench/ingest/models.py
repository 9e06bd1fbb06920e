"""Phase 3, second part: the ONNX int8 embedder next to the torch model it stands for, on the same chunks.

The pool is every chunk the worker stored for the documents ``qa.jsonl`` asks about. Each embedder embeds
the whole pool and the questions itself (one thread each, in windows of ``WINDOW`` chunks, taking turns, who
goes first alternating), and each ranks the pool by exact cosine. Two question sets:

- ``qa.jsonl``, scored as the retrieval phase scores it;
- the benchmark's own questions: ``count`` chunks drawn at random (fixed seed) from the pool, one sentence of
  8-40 words from each as the query, answered by any chunk holding that sentence (overlap can put it in two).
  They are easy for both models; with hundreds of them a difference of 0.02 shows, which ten questions cannot.

The embedding time of the pool is a second tokens/s figure of both paths, on other texts than phase 2's.

Then the hybrid search itself (``protostar.search.search``: HNSW + full text, fused): the pool's chunks are
copied into one new tenant per embedder, each with that embedder's vectors, and both question sets are asked
of each tenant through ``search()`` with that embedder's query vectors.
"""

from __future__ import annotations

import random
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import text

from bench.harness import System
from bench.ingest import corpus
from bench.ingest.embedding import Throughput
from bench.ingest.retrieval import Score, score

WINDOW = 32
SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Comparison:
    chunks: int
    documents: list[str]
    own_questions: int
    scores: dict[str, dict[str, Score]]  # "onnx" | "torch" -> "qa" | "own" | "hybrid qa" | "hybrid own" -> Score
    throughput: dict[str, Throughput]


def pool(system: System, tenant_id: uuid.UUID, names: dict[str, str], documents: set[str]) -> list[tuple[str, str]]:
    """(file name, text) of every chunk of ``documents``, in document and chunk order."""
    ids = [doc_id for doc_id, name in names.items() if name in documents]
    with system.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT document_id, text FROM chunks WHERE tenant_id = :t AND document_id = ANY(:ids) "
                "ORDER BY document_id, ordinal"
            ),
            {"t": tenant_id, "ids": [uuid.UUID(i) for i in ids]},
        ).all()
    return sorted(((names[str(doc)], str(body)) for doc, body in rows), key=lambda r: r[0])


def own_questions(chunks: list[tuple[str, str]], count: int, seed: int = 7) -> list[corpus.Question]:
    """One sentence of 8-40 words from each of ``count`` chunks drawn at random: the query (spaces collapsed)
    and the evidence (as it stands in the chunk)."""
    rng = random.Random(seed)
    out: list[corpus.Question] = []
    for index in rng.sample(range(len(chunks)), len(chunks)):
        name, body = chunks[index]
        sentences = [s.strip() for s in SENTENCE.split(body) if 8 <= len(s.split()) <= 40]
        if sentences:
            sentence = rng.choice(sentences)
            out.append(corpus.Question(" ".join(sentence.split()), name, (sentence,)))
        if len(out) == count:
            break
    return out


def compare(
    system: System,
    tenant_id: uuid.UUID,
    chunks: list[tuple[str, str]],
    own: list[corpus.Question],
    embedders: dict[str, Any],
) -> Comparison:
    """Both embedders over the pool (taking turns per window), then each ranks the pool for every question."""
    texts = [body for _, body in chunks]
    tokenizer = embedders["torch"]._loaded().tokenizer
    tokens = sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=256)["input_ids"])
    vectors: dict[str, list[Any]] = {name: [] for name in embedders}
    seconds = dict.fromkeys(embedders, 0.0)
    for turn, start in enumerate(range(0, len(texts), WINDOW)):
        names = list(embedders) if turn % 2 == 0 else list(embedders)[::-1]
        for name in names:
            began = time.perf_counter()
            vectors[name].append(embedders[name].embed(texts[start : start + WINDOW]))
            seconds[name] += time.perf_counter() - began
    qa = corpus.questions()
    scores: dict[str, dict[str, Score]] = {}
    for name, embedder in embedders.items():
        matrix = np.concatenate(vectors[name])
        scores[name] = {"qa": _scored(embedder, matrix, chunks, qa), "own": _scored(embedder, matrix, chunks, own)}
        searched = _copied(system, tenant_id, chunks, matrix, embedder.model, f"bench-models-{name}")
        scores[name] |= {
            "hybrid qa": _searched(system, searched, embedder, qa),
            "hybrid own": _searched(system, searched, embedder, own),
        }
    return Comparison(
        len(chunks),
        sorted({name for name, _ in chunks}),
        len(own),
        scores,
        {name: Throughput(len(texts), tokens, s) for name, s in seconds.items()},
    )


def _scored(embedder: Any, matrix: Any, chunks: list[tuple[str, str]], questions: list[corpus.Question]) -> Score:
    queries = embedder.embed([q.question for q in questions])
    top = {q.question: np.argsort(-(matrix @ queries[i]), kind="stable")[:5] for i, q in enumerate(questions)}
    return score(questions, lambda q: [chunks[j] for j in top[q.question]])


def _copied(
    system: System, source: uuid.UUID, chunks: list[tuple[str, str]], matrix: Any, model: str, tenant: str
) -> tuple[uuid.UUID, dict[str, str]]:
    """The pool's chunks (rows of the source tenant, in the pool's order) copied into a new tenant with
    ``matrix`` as their vectors under ``model``: (tenant id, document id -> file name)."""
    from protostar.auth import ensure_tenant
    from protostar.db.engine import make_sessionmaker
    from protostar.ingest import store
    from protostar.ingest.chunk import Chunk

    with make_sessionmaker(system.engine).begin() as session:
        tenant_id = ensure_tenant(session, tenant)
    with system.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT d.filename, c.ordinal, c.text, c.page, c.element_types, c.token_count FROM chunks c "
                "JOIN documents d ON d.id = c.document_id WHERE c.tenant_id = :t AND d.filename = ANY(:names) "
                "ORDER BY c.document_id, c.ordinal"
            ),
            {"t": source, "names": sorted({name for name, _ in chunks})},
        ).all()
    rows = sorted(rows, key=lambda r: str(r[0]))  # the pool's order
    assert [(str(r[0]), str(r[2])) for r in rows] == chunks
    names: dict[str, str] = {}
    with system.engine.begin() as conn:
        for filename in sorted({name for name, _ in chunks}):
            document_id = uuid.uuid4()
            names[str(document_id)] = filename
            conn.execute(
                text(
                    "INSERT INTO documents (id, tenant_id, filename, content_type, size, sha256, object_key) "
                    "VALUES (:id, :t, :name, 'text/plain', 0, :sha, 'none')"
                ),
                {"id": document_id, "t": tenant_id, "name": filename, "sha": uuid.uuid4().hex * 2},
            )
            at = [i for i, r in enumerate(rows) if str(r[0]) == filename]
            pieces = [
                Chunk(int(rows[i][1]), str(rows[i][2]), rows[i][3], list(rows[i][4]), int(rows[i][5])) for i in at
            ]
            store.replace_chunks(
                conn, document_id=document_id, tenant_id=tenant_id, chunks=pieces, vectors=matrix[at], model=model
            )
    return tenant_id, names


def _searched(
    system: System, searched: tuple[uuid.UUID, dict[str, str]], embedder: Any, questions: list[corpus.Question]
) -> Score:
    from protostar.search import search

    tenant_id, names = searched
    queries = embedder.embed([q.question for q in questions])
    hits = {}
    with system.engine.connect() as conn:
        for i, q in enumerate(questions):
            found = search(
                conn, tenant_id=tenant_id, query=q.question, query_vector=queries[i], model=embedder.model, top_k=5
            )
            hits[q.question] = [(names[str(h.document_id)], h.text) for h in found]
    return score(questions, lambda q: hits[q.question])
