"""Phase ``f``: fusions compared offline. Each question's two candidate lists are fetched once, exactly as
``protostar.search`` builds them (:func:`protostar.search.candidate_lists`: the same statement without its
fusion; the vector side's chunks with their cosine distances, the full-text side's with their tier and
``ts_rank_cd``), then every fusion variant ranks them in Python and is scored recall@1, recall@5, MRR@5.

Variants (``VARIANTS``):

- ``rrf k=K v:f=W`` reciprocal rank fusion, ``Σ weight / (K + rank)``; Protostar's search is ``rrf
  k=RRF_K v:f=1:1, tiers`` (the full-text list ordered by tier, then ``ts_rank_cd``; k was 60 until this
  phase chose 30);
- the full-text tiers: ``tiers`` (as the search: every-word chunks first), ``flat`` (one list by
  ``ts_rank_cd`` alone, tiers ignored), ``bonus`` (as ``tiers``, and the every-word chunks count again as a
  third list, ranked among themselves, with the full-text weight);
- ``score a=A``: a convex combination of the scores instead of the ranks, ``A · vector + (1 - A) · full
  text``, each min-max normalized over its list (1 the best, 0 the worst or absent; the distance reversed);
  ``tiers`` maps the every-word tier to the upper half of the full-text score and the rest to the lower half.

The fusion of Protostar's search is reproduced here (the variant above): the phase also reports on how many
questions its top 5 equals ``search()``'s, as a check that the lists are the search's own.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.harness import System
from bench.quality.answers import Ranking
from protostar.search import RRF_K

Judge = Callable[[str, str], bool]  # (file name, chunk text) -> the chunk answers the question


@dataclass(frozen=True)
class Variant:
    kind: str  # "rrf" or "score"
    tiers: str = "tiers"  # "tiers", "flat", "bonus" (rrf); "tiers" or "flat" (score)
    k: int = 60
    weights: tuple[float, float] = (1.0, 1.0)  # vector, full text
    alpha: float = 0.5

    @property
    def label(self) -> str:
        if self.kind == "score":
            return f"score a={self.alpha:g}, {self.tiers}"
        v, f = self.weights
        return f"rrf k={self.k} v:f={v:g}:{f:g}, {self.tiers}"


SEARCH = Variant("rrf", k=RRF_K)  # what protostar.search does
WEIGHTS = ((2.0, 1.0), (1.5, 1.0), (1.0, 1.0), (1.0, 1.5), (1.0, 2.0))
VARIANTS = (
    *(
        Variant("rrf", tiers, k, w)
        for tiers in ("tiers", "flat", "bonus")
        for k in (5, 10, 20, 30, 60)
        for w in WEIGHTS
    ),
    *(Variant("score", tiers, alpha=a) for tiers in ("tiers", "flat") for a in (0.3, 0.4, 0.5, 0.6, 0.7)),
)


@dataclass(frozen=True)
class Lists:
    vector: list[tuple[int, float]]  # (chunk id, distance), best first
    full_text: list[tuple[int, int, float]]  # (chunk id, tier, ts_rank_cd), as the search orders them
    searched: list[int]  # protostar.search.search()'s top 5 ids, for the check


def fetch(system: System, tenant_id: uuid.UUID, queries: Sequence[str], embedder: Any) -> dict[str, Lists]:
    """Each query's candidate lists (and ``search()``'s top 5), in a transaction each."""
    from protostar.search import candidate_lists, search

    vectors = embedder.embed(list(queries))
    out: dict[str, Lists] = {}
    for query, vector in zip(queries, vectors, strict=True):
        common = {"tenant_id": tenant_id, "query": query, "query_vector": vector, "model": embedder.model}
        with system.engine.begin() as conn:
            got = candidate_lists(conn, **common)
        with system.engine.begin() as conn:
            hits = search(conn, **common, top_k=5)
        out[query] = Lists(got.vector, got.full_text, [h.chunk_id for h in hits])
    return out


def chunk_texts(system: System, ids: set[int]) -> dict[int, tuple[str, str]]:
    """Chunk id -> (its document's file name, its text)."""
    with system.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT c.id, d.filename, c.text FROM chunks c JOIN documents d ON d.id = c.document_id"
            " WHERE c.id = ANY(%(ids)s)",
            {"ids": sorted(ids)},
        ).all()
    return {int(r[0]): (str(r[1]), str(r[2])) for r in rows}


def _minmax(values: dict[int, float], *, lower_is_better: bool = False) -> dict[int, float]:
    if not values:
        return {}
    lo, hi = min(values.values()), max(values.values())
    span = hi - lo
    out = {}
    for i, v in values.items():
        x = (v - lo) / span if span > 0 else 1.0
        out[i] = 1.0 - x if lower_is_better and span > 0 else x
    return out


def fuse(variant: Variant, lists: Lists) -> list[int]:
    """The chunk ids by the variant's score, best first (ties by id, as the search breaks them)."""
    score: dict[int, float] = {}
    wv, wf = variant.weights
    if variant.kind == "rrf":
        full = lists.full_text
        if variant.tiers == "flat":
            full = sorted(full, key=lambda r: (-r[2], r[0]))
        for rank, (i, _) in enumerate(lists.vector, start=1):
            score[i] = score.get(i, 0.0) + wv / (variant.k + rank)
        for rank, (i, _, _) in enumerate(full, start=1):
            score[i] = score.get(i, 0.0) + wf / (variant.k + rank)
        if variant.tiers == "bonus":
            for rank, (i, _, _) in enumerate((r for r in full if r[1] == 0), start=1):
                score[i] = score.get(i, 0.0) + wf / (variant.k + rank)
    else:
        vec = _minmax({i: d for i, d in lists.vector}, lower_is_better=True)
        if variant.tiers == "tiers":
            fts: dict[int, float] = {}
            for tier in (0, 1):
                part = _minmax({i: r for i, t, r in lists.full_text if t == tier})
                fts |= {i: (0.5 + 0.5 * x if tier == 0 else 0.5 * x) for i, x in part.items()}
        else:
            fts = _minmax({i: r for i, _, r in lists.full_text})
        for i in vec.keys() | fts.keys():
            score[i] = variant.alpha * vec.get(i, 0.0) + (1 - variant.alpha) * fts.get(i, 0.0)
    return sorted(score, key=lambda i: (-score[i], i))


def score(
    variant: Variant, lists: dict[str, Lists], judges: dict[str, Judge], texts: dict[int, tuple[str, str]]
) -> Ranking:
    out = Ranking()
    for query, got in lists.items():
        top = fuse(variant, got)[:5]
        judge = judges[query]
        out.ranks[query] = next((n for n, i in enumerate(top, start=1) if judge(*texts[i])), 0)
    return out


def reproduced(lists: dict[str, Lists]) -> int:
    """On how many questions the search's fusion, reproduced here, gives ``search()``'s own top 5."""
    return sum(1 for got in lists.values() if fuse(SEARCH, got)[:5] == got.searched)


def compare(
    system: System, sets: dict[str, tuple[uuid.UUID, dict[str, Judge]]], embedder: Any
) -> tuple[dict[str, dict[str, Ranking]], dict[str, tuple[int, int]]]:
    """Question set -> variant label -> its ranking; and question set -> (questions whose search top 5 the
    reproduced fusion matched, questions)."""
    rankings: dict[str, dict[str, Ranking]] = {}
    checks: dict[str, tuple[int, int]] = {}
    for name, (tenant_id, judges) in sets.items():
        lists = fetch(system, tenant_id, list(judges), embedder)
        ids = {i for got in lists.values() for i, _ in got.vector} | {
            i for got in lists.values() for i, _, _ in got.full_text
        }
        texts = chunk_texts(system, ids)
        rankings[name] = {v.label: score(v, lists, judges, texts) for v in VARIANTS}
        checks[name] = (reproduced(lists), len(lists))
    return rankings, checks


def table(rankings: dict[str, dict[str, Ranking]]) -> list[str]:
    """Markdown: a row per variant, recall@1 / recall@5 / MRR@5 per question set, and how many questions'
    ranks differ from the search's (better · worse)."""
    names = list(rankings)
    head = "| variant | " + " | ".join(f"{n}: R@1 / R@5 / MRR@5 (± questions)" for n in names) + " |"
    lines = [head, "| --- |" + " --- |" * len(names)]
    for variant in VARIANTS:
        cells = []
        for n in names:
            r, base = rankings[n][variant.label], rankings[n][SEARCH.label]
            better = sum(1 for q, x in r.ranks.items() if _rr(x) > _rr(base.ranks[q]))
            worse = sum(1 for q, x in r.ranks.items() if _rr(x) < _rr(base.ranks[q]))
            cells.append(f"{r.recall(1):.2f} / {r.recall(5):.2f} / {r.mrr():.3f} (+{better} -{worse})")
        mark = " **(search)**" if variant == SEARCH else ""
        lines.append(f"| {variant.label}{mark} | " + " | ".join(cells) + " |")
    return lines


def _rr(rank: int) -> float:
    return 1 / rank if 0 < rank <= 5 else 0.0


def winners(rankings: dict[str, dict[str, Ranking]]) -> list[str]:
    """The variants the adoption rule keeps: MRR@5 higher on every question set (or higher on one and within
    0.01 on the others), recall@5 lower on none."""
    out = []
    for variant in VARIANTS:
        if variant == SEARCH:
            continue
        pairs = [(by[variant.label], by[SEARCH.label]) for by in rankings.values()]
        if any(r.recall(5) < base.recall(5) for r, base in pairs):
            continue
        gains = [r.mrr() - base.mrr() for r, base in pairs]
        if any(g > 1e-9 for g in gains) and all(g > 1e-9 or g >= -0.01 for g in gains):
            out.append(variant.label)
    return out


def moved(rankings: dict[str, dict[str, Ranking]], label: str) -> list[str]:
    """The questions whose rank (of the first answering chunk in the top 5; 0 none) the variant changed."""
    out = []
    for name, by in rankings.items():
        base = by[SEARCH.label].ranks
        for q, rank in by[label].ranks.items():
            if rank != base[q]:
                out.append(f"{name}: {q} {base[q]} → {rank}")
    return out
