"""Phase 3, second part: the ONNX int8 embedder next to the torch model it stands for, on the same chunks.

The pool is every chunk the worker stored for the documents ``qa.jsonl`` asks about. Each embedder embeds
the whole pool and the questions itself (one thread each, in windows of ``WINDOW`` chunks, taking turns, who
goes first alternating), and each ranks the pool by exact cosine. Two question sets:

- ``qa.jsonl``, scored as the retrieval phase scores it;
- the benchmark's own questions: ``count`` chunks drawn at random (fixed seed) from the pool, one sentence of
  8-40 words from each as the query, answered by any chunk holding that sentence (overlap can put it in two).
  They are easy for both models; with hundreds of them a difference of 0.02 shows, which ten questions cannot.

The embedding time of the pool is a second tokens/s figure of both paths, on other texts than phase 2's.
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
    scores: dict[str, dict[str, Score]]  # "onnx" | "torch" -> "qa" | "own" -> Score
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


def compare(chunks: list[tuple[str, str]], own: list[corpus.Question], embedders: dict[str, Any]) -> Comparison:
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
