"""Phase 3, second part: the ONNX int8 embedder next to the torch model it stands for, on the same chunks.

Each embedder embeds every chunk the worker stored for the corpus (one thread each, in windows of ``WINDOW``
chunks, taking turns, who goes first alternating): a second tokens/s figure of both paths, on other texts
than phase 2's. Both are then compared over two scopes of those chunks:

- the chunks of the documents ``qa.jsonl`` asks about (536 chunks: a small pool where the ranking is mostly
  the embedder's);
- the whole corpus (every chunk of every document): what ``POST /v1/search`` searches.

In each scope, each embedder ranks the chunks by exact cosine (vector only), and the scope's chunks are copied
into one new tenant per embedder with that embedder's vectors, where the hybrid search itself
(``protostar.search.search``: HNSW + full text, fused by RRF) is asked each question with that embedder's
query vector. Full text only (the same for both embedders: same texts) is the third ranking. Two question
sets:

- ``qa.jsonl``, scored as the retrieval phase scores it;
- the benchmark's own questions: ``count`` chunks of the scope drawn at random (fixed seed), one sentence of
  8-40 words from each as the query, answered by any chunk holding that sentence (overlap can put it in two).
  They are easy for both models; with hundreds of them a difference of 0.02 shows, which ten questions cannot.

A question that one embedder's hybrid search finds in its top 5 and the other's does not is listed with the
rank of its first answering chunk in each list: the fused one (``search()`` asked for 50), exact cosine over
the scope, and full text (the two tiers, without the ``FTS_POOL`` bound).
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

from bench.harness import FULL_TEXT_ONLY, System
from bench.ingest import corpus
from bench.ingest.embedding import Throughput
from bench.ingest.retrieval import Score, score

WINDOW = 32
DEPTH = 50  # ranks looked at for a lost question: search()'s candidates per list
SENTENCE = re.compile(r"(?<=[.!?])\s+")

Ranked = dict[str, list[tuple[str, str]]]  # question -> (file name, text) of its hits, best first


@dataclass(frozen=True)
class Embedded:
    """Every chunk of the corpus, (file name, text) in file name and chunk order, embedded by each model."""

    chunks: list[tuple[str, str]]
    vectors: dict[str, Any]  # "onnx" | "torch" -> float32 matrix, a row per chunk
    throughput: dict[str, Throughput]


@dataclass(frozen=True)
class Comparison:
    chunks: int
    documents: list[str]
    own_questions: int
    # "onnx" | "torch" -> "qa" | "own" | "hybrid qa" | "hybrid own" -> Score; "full text" -> "qa" | "own" -> Score
    scores: dict[str, dict[str, Score]]
    lost: dict[str, list[str]]  # "qa" | "own" -> questions one model's hybrid search finds and the other's misses
    table: list[str]  # markdown: each qa.jsonl question's rank in every list


def pool(system: System, tenant_id: uuid.UUID, names: dict[str, str]) -> list[tuple[str, str]]:
    """(file name, text) of every chunk of the documents ``names`` (id -> file name), in file name and chunk
    order."""
    with system.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT document_id, text FROM chunks WHERE tenant_id = :t AND document_id = ANY(:ids) "
                "ORDER BY document_id, ordinal"
            ),
            {"t": tenant_id, "ids": [uuid.UUID(i) for i in names]},
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


def embed(chunks: list[tuple[str, str]], embedders: dict[str, Any]) -> Embedded:
    """Both embedders over every chunk, taking turns per window, timed."""
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
    return Embedded(
        chunks,
        {name: np.concatenate(v) for name, v in vectors.items()},
        {name: Throughput(len(texts), tokens, s) for name, s in seconds.items()},
    )


def compare(
    system: System,
    tenant_id: uuid.UUID,
    embedded: Embedded,
    documents: set[str] | None,
    own: int,
    embedders: dict[str, Any],
    stored: tuple[dict[str, str], Any] | None = None,
) -> Comparison:
    """The two embedders over the chunks of ``documents`` (every chunk when None), each ranking them for every
    question of ``qa.jsonl`` and of ``own`` questions drawn from those chunks. ``stored`` (document id -> file
    name of ``tenant_id``, and the embedder the worker stored its chunks with) adds, to the table of ranks,
    ``search()`` over the worker's own rows, as ``POST /v1/search`` asks it."""
    at = [i for i, (name, _) in enumerate(embedded.chunks) if documents is None or name in documents]
    chunks = [embedded.chunks[i] for i in at]
    sets = {"qa": corpus.questions(), "own": own_questions(chunks, own)}
    scores: dict[str, dict[str, Score]] = {}
    ranked: dict[str, dict[str, Ranked]] = {}  # model -> "vector qa" | "hybrid own" | ... -> Ranked
    searched: tuple[uuid.UUID, dict[str, str]] | None = None
    for name, embedder in embedders.items():
        matrix = embedded.vectors[name][at]
        searched = _copied(system, tenant_id, chunks, matrix, embedder.model, f"bench-models-{name}-{len(at)}")
        ranked[name] = {}
        for key, questions in sets.items():
            ranked[name][f"vector {key}"] = _exact(embedder, matrix, chunks, questions)
            ranked[name][f"hybrid {key}"] = _searched(system, searched, embedder, questions)
        scores[name] = {
            "qa": _top5(sets["qa"], ranked[name]["vector qa"]),
            "own": _top5(sets["own"], ranked[name]["vector own"]),
            "hybrid qa": _top5(sets["qa"], ranked[name]["hybrid qa"]),
            "hybrid own": _top5(sets["own"], ranked[name]["hybrid own"]),
        }
    assert searched is not None
    model = embedders[list(embedders)[-1]].model  # the last copy's model: full text is the same in both copies
    full_text = {key: _full_text(system, searched, model, questions) for key, questions in sets.items()}
    scores["full text"] = {key: _top5(sets[key], full_text[key]) for key in sets}
    lost = {key: _lost(questions, ranked, full_text[key], key) for key, questions in sets.items()}
    worker = _searched(system, (tenant_id, stored[0]), stored[1], sets["qa"]) if stored else None
    table = _table(sets["qa"], ranked, full_text["qa"], worker)
    return Comparison(len(chunks), sorted({name for name, _ in chunks}), len(sets["own"]), scores, lost, table)


def _table(
    questions: list[corpus.Question], ranked: dict[str, dict[str, Ranked]], full_text: Ranked, worker: Ranked | None
) -> list[str]:
    """A markdown table: each question's rank (of its first answering chunk) in every list."""
    models = list(ranked)
    head = [f"hybrid, {name} copy" for name in models] + (["hybrid, worker's rows"] if worker else [])
    head += [f"exact cosine, {name}" for name in models] + ["full text"]
    lines = ["| question | " + " | ".join(head) + " |", "| --- |" + " --- |" * len(head)]
    for q in questions:
        cells = [_rank(q, ranked[name]["hybrid qa"][q.question], DEPTH) for name in models]
        cells += [_rank(q, worker[q.question], DEPTH)] if worker else []
        cells += [
            _rank(q, ranked[name]["vector qa"][q.question], len(ranked[name]["vector qa"][q.question]))
            for name in models
        ]
        cells += [_rank(q, full_text[q.question], DEPTH)]
        lines.append(f"| {q.question} ({q.document}) | " + " | ".join(cells) + " |")
    return lines


def _top5(questions: list[corpus.Question], ranked: Ranked) -> Score:
    return score(questions, lambda q: ranked[q.question][:5])


def _rank(question: corpus.Question, hits: list[tuple[str, str]], depth: int) -> str:
    """Rank of the first hit answering ``question``, or "> depth"."""
    for rank, (filename, body) in enumerate(hits, start=1):
        if question.answered_by(filename, body):
            return str(rank)
    return f"> {depth}"


def _lost(
    questions: list[corpus.Question], ranked: dict[str, dict[str, Ranked]], full_text: Ranked, key: str
) -> list[str]:
    """Questions in the top 5 of one model's hybrid search and not of the other's, with ranks in each list."""
    out = []
    for q in questions:
        found = {
            name: corpus.reciprocal_rank(q, lists[f"hybrid {key}"][q.question][:5]) > 0
            for name, lists in ranked.items()
        }
        if len(set(found.values())) < 2:
            continue
        ranks = " · ".join(
            f"{name} hybrid {_rank(q, lists[f'hybrid {key}'][q.question], DEPTH)} "
            f"(exact cosine {_rank(q, lists[f'vector {key}'][q.question], len(lists[f'vector {key}'][q.question]))})"
            for name, lists in ranked.items()
        )
        out.append(
            f'"{q.question}" ({q.document}; found by {", ".join(n for n, f in found.items() if f)}): rank of its '
            f"first answering chunk: {ranks}; full text {_rank(q, full_text[q.question], DEPTH)}"
        )
    return out


def _exact(embedder: Any, matrix: Any, chunks: list[tuple[str, str]], questions: list[corpus.Question]) -> Ranked:
    """Every chunk by exact cosine to each question, best first."""
    queries = embedder.embed([q.question for q in questions])
    return {
        q.question: [chunks[j] for j in np.argsort(-(matrix @ queries[i]), kind="stable")]
        for i, q in enumerate(questions)
    }


def _copied(
    system: System, source: uuid.UUID, chunks: list[tuple[str, str]], matrix: Any, model: str, tenant: str
) -> tuple[uuid.UUID, dict[str, str]]:
    """The chunks (rows of the source tenant, in file name and chunk order) copied into a new tenant with
    ``matrix`` as their vectors under ``model``: (tenant id, document id -> file name)."""
    from protostar.auth import ensure_tenant
    from protostar.db.engine import make_sessionmaker
    from protostar.documents.repo import mark_ingested
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
    rows = sorted(rows, key=lambda r: str(r[0]))  # the chunks' order
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
            # the document's counts, as an ingest records them: the search sizes a tenant by them
            mark_ingested(conn, document_id=document_id, chunk_count=len(pieces), page_count=None, model=model)
    return tenant_id, names


def _searched(
    system: System, searched: tuple[uuid.UUID, dict[str, str]], embedder: Any, questions: list[corpus.Question]
) -> Ranked:
    """``search()``'s best ``DEPTH`` hits for each question, in the copy's tenant (its top 5 are the same
    chunks as those of a search for 5: one order, cut)."""
    from protostar.search import search

    tenant_id, names = searched
    queries = embedder.embed([q.question for q in questions])
    hits = {}
    with system.engine.connect() as conn:
        for i, q in enumerate(questions):
            found = search(
                conn, tenant_id=tenant_id, query=q.question, query_vector=queries[i], model=embedder.model, top_k=DEPTH
            )
            hits[q.question] = [(names[str(h.document_id)], h.text) for h in found]
    return hits


def _full_text(
    system: System, searched: tuple[uuid.UUID, dict[str, str]], model: str, questions: list[corpus.Question]
) -> Ranked:
    """The full-text ranking alone (every word first, then any word; ``retrieval.FULL_TEXT_ONLY``) in a copy."""
    from protostar.search import loose_query

    tenant_id, names = searched
    out = {}
    with system.engine.connect() as conn:
        for q in questions:
            params = {
                "tenant": tenant_id,
                "model": model,
                "k": DEPTH,
                "query": q.question,
                "loose": loose_query(q.question),
            }
            out[q.question] = [
                (names.get(str(r[0]), "?"), str(r[1])) for r in conn.exec_driver_sql(FULL_TEXT_ONLY, params)
            ]
    return out
