"""Hybrid retrieval over a tenant's chunks: vector similarity and full text, fused by reciprocal rank (k=30).

One statement does it all (after one ``set_config`` for the HNSW scan): two candidate lists, each ranked on
its own, then ``score = Σ 1 / (30 + rank)`` over the lists a chunk appears in (``RRF_K``; both lists weigh
the same). ``bench.quality``'s phase ``f`` compared fusions over these very lists (:func:`candidate_lists`):
k = 30 instead of the customary 60 ranked one more question higher on each of its two question sets and
lowered recall@5 on neither; weights other than 1:1, the full-text tiers merged into one list by
``ts_rank_cd``, and a convex combination of normalized scores each lost recall@5 on ``qa.jsonl`` or MRR@5 on
the other set (``bench/results/quality-fusion.md``).

- Vector side: cosine distance ``embedding::vector(dim) <=> query`` with the model's name as a literal, so the
  planner can use the model's partial HNSW index. The tenant filter is applied while the index is walked;
  pgvector 0.8's iterative scan (``hnsw.iterative_scan = relaxed_order``) keeps walking until enough rows of
  this tenant were found, and the candidates are re-sorted by exact distance afterwards. That walk gives up
  after ``hnsw.max_scan_tuples`` (20,000) tuples, so a small tenant beside large ones could come back with no
  vector candidates at all: a tenant (or a scope) of at most ``EXACT_CHUNKS`` chunks, as its documents count
  them, is ranked exactly instead (its count comes back with the HNSW settings, in the same round trip).
- Full-text side: chunks matching the question with every word (``websearch_to_tsquery``) first; when those
  are fewer than the candidates wanted, then chunks matching any of its words (questions rarely share all
  their words with the answer); each tier by ``ts_rank_cd``. Ranking reads every ranked chunk's ``tsv``, so
  each tier ranks at most ``FTS_POOL`` chunks. The "any word" tier takes the chunks holding the question's
  *rarest* words (:func:`rare_words`): its lexemes by the number of the tenant's chunks estimated to hold each
  (the share of ``chunks`` holding it, from ``pg_stats`` of ``tsv``, cached per process for
  ``STATISTICS_TTL``, times the tenant's chunks as its documents count them), as many as stay within the
  pool together, the rarest always; the chunks are still ranked by the whole question. A tenant with few
  chunks keeps every word (every match ranked, as without a bound); a large one ranks the chunks of its rare
  words, not the first matches in storage order. The question's lexemes come back with the HNSW settings
  (:func:`configure_scan`), so a search is still two statements.

Only chunks embedded with ``model`` are searched, on both sides, so the two lists rank the same corpus.

**Scope** (:class:`Scope`: collections and a metadata filter, ``documents.filters``) is applied inside both
lists, not to the fused result, so ``top_k`` is still filled when enough chunks match. One query first finds
the documents in scope (``documents`` by tenant, the GIN index on ``metadata``, the membership table's primary
key) and the number of their chunks; both lists then keep ``document_id = ANY(those ids)`` (a constant array,
which PostgreSQL tests with a hash). When the scope holds at most ``EXACT_CHUNKS`` chunks the vector side
ranks all of them by exact distance (read through the ``document_id`` index): an HNSW walk that skips most of
what it visits could come back short. Above that, the HNSW walk with the filter applied while walking (the
iterative scan) finds enough.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import sql
from sqlalchemy import Connection, Engine, text

from protostar.db.values import clean_text, vector_literal
from protostar.documents.filters import Clause, compile_filter

if TYPE_CHECKING:
    from protostar.embeddings.embed import Embedder

logger = logging.getLogger(__name__)

RRF_K = 30  # reciprocal rank fusion's k (bench.quality phase f: 60 ranked two questions lower)
MAX_LOOSE_WORDS = 32
EXACT_CHUNKS = 20_000  # a scope of at most this many chunks is ranked exactly on the vector side
FTS_POOL = 300  # most chunks ranked per full-text tier, and the "any word" tier's budget of estimated matches.
# Before the rarest words chose that tier's chunks it was an arbitrary subset in storage order when a question's
# words matched more: 200 then lost a qa.jsonl question, 1,000 kept it at twice the latency (bench.ingest).
_WORD = re.compile(r"\w+")
_EXCLUDED = re.compile(r"(?<![\w-])-\w+")  # websearch syntax: -word excludes the word

_CANDIDATES = """
WITH q AS MATERIALIZED (
    SELECT websearch_to_tsquery('english', %(query)s) AS strict, websearch_to_tsquery('english', %(loose)s) AS loose
),
rare AS (SELECT %(rare)s::tsquery AS words),
vec AS MATERIALIZED ({vec}),
every_word AS MATERIALIZED (
    SELECT c.id, c.tsv FROM chunks c CROSS JOIN q
    WHERE c.tsv @@ q.strict AND c.embedding_model = {model} AND c.tenant_id = %(tenant)s{c_scope}
    LIMIT %(pool)s
),
some_word AS MATERIALIZED (
    SELECT c.id, c.tsv FROM chunks c CROSS JOIN rare
    WHERE c.tsv @@ rare.words AND c.id NOT IN (SELECT id FROM every_word) AND c.embedding_model = {model}
      AND c.tenant_id = %(tenant)s{c_scope}
      AND (SELECT count(*) FROM every_word) < %(candidates)s
    LIMIT %(pool)s
),
fts AS MATERIALIZED (
    SELECT id, 0 AS tier, ts_rank_cd(tsv, q.strict) AS rank_cd FROM every_word CROSS JOIN q
    UNION ALL
    SELECT id, 1 AS tier, ts_rank_cd(tsv, q.loose) AS rank_cd FROM some_word CROSS JOIN q
    ORDER BY tier, rank_cd DESC, id
    LIMIT %(candidates)s
){tail}"""

# The fusion and the answer: what follows the candidate lists in a search.
_FUSE = """,
ranked AS (
    SELECT id, row_number() OVER (ORDER BY distance, id) AS rank FROM vec
    UNION ALL
    SELECT id, row_number() OVER (ORDER BY tier, rank_cd DESC, id) AS rank FROM fts
),
fused AS MATERIALIZED (
    SELECT id, sum(1.0::float8 / (%(rrf_k)s + rank)) AS score FROM ranked
    GROUP BY id ORDER BY score DESC, id LIMIT %(top_k)s
)
SELECT c.document_id, c.id, c.text, f.score, c.page, d.filename, c.ordinal, d.content_type
FROM fused f
JOIN chunks c ON c.id = f.id
JOIN documents d ON d.id = c.document_id
WHERE c.tenant_id = %(tenant)s AND d.tenant_id = %(tenant)s
ORDER BY f.score DESC, c.id
"""
# Instead of the fusion, the two lists as they are (:func:`candidate_lists`): the vector side's ids with their
# distances, the full-text side's with their tier and ``ts_rank_cd``.
_LISTS = """
SELECT 0 AS side, id, distance::float8, NULL::int FROM vec
UNION ALL
SELECT 1 AS side, id, rank_cd::float8, tier FROM fts
"""

# The vector side: the nearest chunks by the model's HNSW index, or (a small scope) all the scope's chunks
# ranked by exact distance; ``OFFSET 0`` keeps the planner from ordering them by the index instead.
_VEC_INDEX = """
    SELECT id, embedding::vector({dim}) <=> %(vector)s::vector({dim}) AS distance
    FROM chunks
    WHERE embedding_model = {model} AND tenant_id = %(tenant)s{scope}
    ORDER BY embedding::vector({dim}) <=> %(vector)s::vector({dim})
    LIMIT %(candidates)s
"""
_VEC_EXACT = """
    SELECT id, distance FROM (
        SELECT id, embedding::vector({dim}) <=> %(vector)s::vector({dim}) AS distance
        FROM chunks
        WHERE embedding_model = {model} AND tenant_id = %(tenant)s{scope}
        OFFSET 0
    ) s
    ORDER BY distance, id
    LIMIT %(candidates)s
"""

# What ANALYZE found in ``chunks``: the most common lexemes of ``tsv`` and the share of the rows holding each
# (the list's least share follows it).
_STATISTICS = """
SELECT w.most_common_elems::text::text[], w.most_common_elem_freqs
FROM (SELECT 1) one
LEFT JOIN pg_stats w ON w.schemaname = current_schema() AND w.tablename = 'chunks' AND w.attname = 'tsv'
"""
STATISTICS_TTL = 60.0  # seconds a process keeps the statistics above before reading them again

_IN_SCOPE = """
SELECT coalesce(array_agg(d.id), '{{}}'::uuid[]), coalesce(sum(d.chunk_count), 0)
FROM documents d
WHERE d.tenant_id = %(tenant)s AND {condition}
"""
_MEMBERS = "d.id IN (SELECT m.document_id FROM collection_documents m WHERE m.collection_id = ANY(%(collections)s))"


@dataclass(frozen=True)
class Scope:
    """Which of the tenant's documents a search reads: those in any of ``collection_ids`` (all when empty) whose
    metadata passes every clause of ``filter`` (``documents.filters.parse_filter``)."""

    collection_ids: tuple[uuid.UUID, ...] = ()
    filter: tuple[Clause, ...] = ()

    @property
    def everything(self) -> bool:
        return not self.collection_ids and not self.filter


@dataclass(frozen=True)
class InScope:
    document_ids: list[uuid.UUID]
    chunks: int


def in_scope(conn: Connection, *, tenant_id: uuid.UUID, scope: Scope) -> InScope:
    """The tenant's documents in ``scope`` and how many chunks they hold."""
    compiled = compile_filter(list(scope.filter))
    conditions = [compiled.sql]
    params: dict[str, Any] = {"tenant": tenant_id, **compiled.params}
    if scope.collection_ids:
        conditions.append(_MEMBERS)
        params["collections"] = list(scope.collection_ids)
    raw = _driver(conn)
    statement = sql.SQL(_IN_SCOPE).format(condition=sql.SQL(" AND ".join(conditions))).as_string(raw)
    ids, chunks = conn.exec_driver_sql(statement, params).one()
    return InScope(list(ids), int(chunks))


@dataclass(frozen=True)
class Hit:
    document_id: uuid.UUID
    chunk_id: int
    text: str
    score: float
    page: int | None
    filename: str
    ordinal: int = 0  # the chunk's position in its document, from 0
    content_type: str = ""  # the document's


def search(
    conn: Connection,
    *,
    tenant_id: uuid.UUID,
    query: str,
    query_vector: npt.NDArray[np.floating[Any]],
    model: str,
    top_k: int,
    candidates: int = 50,
    ef_search: int = 80,
    scope: Scope | None = None,
) -> list[Hit]:
    """The tenant's best ``top_k`` chunks for ``query`` (embedded as ``query_vector`` by ``model``), among the
    documents in ``scope`` (all the tenant's when ``None``)."""
    if top_k <= 0:
        return []
    vector = _single_vector(query_vector)
    started = time.monotonic()
    documents: InScope | None = None
    if scope is not None and not scope.everything:
        documents = in_scope(conn, tenant_id=tenant_id, scope=scope)
        if not documents.document_ids:
            return []
    statement, params = _prepared(
        conn,
        tenant_id=tenant_id,
        query=query,
        vector=vector,
        model=model,
        top_k=top_k,
        candidates=max(candidates, top_k),
        ef_search=max(ef_search, candidates),
        documents=documents,
    )
    rows = conn.exec_driver_sql(statement, params).all()
    hits = [Hit(row[0], row[1], row[2], float(row[3]), row[4], row[5], row[6], row[7]) for row in rows]
    logger.debug(
        "tenant_id=%s search model=%s hits=%d in %.1f ms",
        tenant_id,
        model,
        len(hits),
        (time.monotonic() - started) * 1000,
    )
    return hits


def retrieve(
    engine: Engine,
    embedder: Embedder,
    *,
    tenant_id: uuid.UUID,
    query: str,
    top_k: int,
    scope: Scope | None = None,
) -> list[Hit]:
    """Embed ``query`` and search the tenant's chunks of the embedder's model (in ``scope``): what the search
    route and chat use."""
    if top_k <= 0:
        return []
    vector = embedder.embed([query])[0]
    with engine.connect() as conn:
        return search(
            conn,
            tenant_id=tenant_id,
            query=query,
            query_vector=vector,
            model=embedder.model,
            top_k=top_k,
            scope=scope,
        )


class Candidates(NamedTuple):
    """The two lists a search fuses, each in its own order, best first."""

    vector: list[tuple[int, float]]  # (chunk id, cosine distance)
    full_text: list[tuple[int, int, float]]  # (chunk id, tier: 0 every word, 1 the rarest words, ts_rank_cd)


def candidate_lists(
    conn: Connection,
    *,
    tenant_id: uuid.UUID,
    query: str,
    query_vector: npt.NDArray[np.floating[Any]],
    model: str,
    candidates: int = 50,
    ef_search: int = 80,
) -> Candidates:
    """The candidate lists :func:`search` would fuse for ``query`` over all the tenant's chunks, with their
    scores, from the same statement without its fusion: for diagnostics and for comparing fusions offline
    (``bench.quality``'s phase ``f``). Run it in a transaction of its own (the HNSW settings are local to it)."""
    vector = _single_vector(query_vector)
    statement, params = _prepared(
        conn,
        tenant_id=tenant_id,
        query=query,
        vector=vector,
        model=model,
        top_k=candidates,
        candidates=candidates,
        ef_search=max(ef_search, candidates),
        lists=True,
    )
    vec: list[tuple[int, float]] = []
    fts: list[tuple[int, int, float]] = []
    for side, chunk_id, score, tier in conn.exec_driver_sql(statement, params).all():
        if side == 0:
            vec.append((int(chunk_id), float(score)))
        else:
            fts.append((int(chunk_id), int(tier), float(score)))
    vec.sort(key=lambda r: (r[1], r[0]))
    fts.sort(key=lambda r: (r[1], -r[2], r[0]))
    return Candidates(vec, fts)


def _prepared(
    conn: Connection,
    *,
    tenant_id: uuid.UUID,
    query: str,
    vector: npt.NDArray[np.float32],
    model: str,
    top_k: int,
    candidates: int,
    ef_search: int,
    documents: InScope | None = None,
    lists: bool = False,
) -> tuple[str, dict[str, Any]]:
    """The HNSW settings made (:func:`configure_scan`, one round trip that also answers the lexemes and the
    tenant's size), then the statement of :func:`search` (``lists``: of :func:`candidate_lists`)."""
    scan = configure_scan(conn, ef_search=ef_search, query=query, tenant_id=tenant_id)
    return search_statement(
        conn,
        tenant_id=tenant_id,
        query=query,
        vector=vector,
        model=model,
        top_k=top_k,
        candidates=candidates,
        documents=documents,
        lexemes=scan.lexemes,
        tenant_chunks=scan.tenant_chunks,
        lists=lists,
    )


_TENANT_CHUNKS = text("SELECT coalesce(sum(chunk_count), 0) FROM documents WHERE tenant_id = :tenant")


class Scan(NamedTuple):
    lexemes: list[str]  # of the question's words
    tenant_chunks: int | None  # the tenant's chunks, as its documents count them (None: not asked)


def configure_scan(conn: Connection, *, ef_search: int, query: str = "", tenant_id: uuid.UUID | None = None) -> Scan:
    """HNSW settings for the rest of the caller's transaction (``SET LOCAL``); in the same round trip, the
    lexemes of ``query``'s words (:func:`query_words`) and the number of ``tenant_id``'s chunks, which
    :func:`search_statement` takes."""
    row = conn.execute(
        text(
            "SELECT set_config('hnsw.ef_search', :ef, true), set_config('hnsw.iterative_scan', 'relaxed_order', true),"
            " tsvector_to_array(to_tsvector('english', :words)),"
            f" ({_TENANT_CHUNKS.text})"
        ),
        {"ef": str(min(max(ef_search, 1), 1000)), "words": " ".join(query_words(query)), "tenant": tenant_id},
    ).one()
    return Scan(list(row[2]), int(row[3]) if tenant_id is not None else None)


def search_statement(
    conn: Connection,
    *,
    tenant_id: uuid.UUID,
    query: str,
    vector: npt.NDArray[np.float32],
    model: str,
    top_k: int,
    candidates: int,
    documents: InScope | None = None,
    lexemes: list[str] | None = None,
    tenant_chunks: int | None = None,
    lists: bool = False,
) -> tuple[str, dict[str, Any]]:
    """The SQL (model and dimension are literals: the partial index's predicate and the cast need them) and
    its parameters, for ``exec_driver_sql`` (and for EXPLAIN in tests). ``documents``: only their chunks.
    ``lexemes``: of the question's words, as :func:`configure_scan` answers them (read here when ``None``).
    ``tenant_chunks``: how many chunks the tenant has (:func:`configure_scan`); a tenant (or a scope) of at most
    ``EXACT_CHUNKS`` is ranked exactly on the vector side. The HNSW walk, filtered by tenant, gives up after
    ``hnsw.max_scan_tuples`` (20,000) tuples of the index: a small tenant beside large ones could get no vector
    candidates at all. ``lists``: the statement answers the two candidate lists instead of the fused hits
    (:func:`candidate_lists`)."""
    raw = _driver(conn)
    if lexemes is None:
        lexemes = _lexemes(conn, query)
    dim, literal = sql.Literal(len(vector)), sql.Literal(model)
    scoped = documents is not None
    size = documents.chunks if documents is not None else tenant_chunks
    vec = _VEC_EXACT if size is not None and size <= EXACT_CHUNKS else _VEC_INDEX
    statement = (
        sql.SQL(_CANDIDATES)
        .format(
            tail=sql.SQL(_LISTS if lists else _FUSE),
            vec=sql.SQL(vec).format(
                dim=dim, model=literal, scope=sql.SQL(" AND document_id = ANY(%(documents)s)" if scoped else "")
            ),
            dim=dim,
            model=literal,
            c_scope=sql.SQL(" AND c.document_id = ANY(%(documents)s)" if scoped else ""),
        )
        .as_string(raw)
    )
    params: dict[str, Any] = {
        "query": clean_text(query),
        "loose": loose_query(query),
        "rare": rare_words(
            lexemes, rows=_rows(conn, tenant_id, documents, tenant_chunks), statistics=_statistics(conn)
        ),
        "vector": vector_literal(vector),
        "tenant": tenant_id,
        "candidates": candidates,
        "pool": FTS_POOL,
        "rrf_k": RRF_K,
        "top_k": top_k,
    }
    if documents is not None:
        params["documents"] = documents.document_ids
    return statement, params


@dataclass(frozen=True)
class Statistics:
    """What the last ``ANALYZE`` of ``chunks`` says (``pg_stats``), as the "any word" tier needs it."""

    lexemes: dict[str, float]  # the most common lexemes of ``tsv`` -> the share of chunks holding each
    floor: float  # the share taken for a lexeme outside that list: the list's least
    read_at: float = 0.0  # time.monotonic()


_statistics_cache: dict[str, Statistics] = {}


def rare_words(lexemes: list[str], *, rows: float, statistics: Statistics) -> str | None:
    """The "any word" tier's query (``tsquery`` text): the question's lexemes by increasing estimated number
    of chunks holding them (share x ``rows``, the longer first on a tie), as many as keep the sum of those
    numbers within ``FTS_POOL``, and always the rarest one. A tenant whose chunks are few enough keeps every
    word (estimates of 0 without statistics); one with many ranks the chunks of its rarest words instead of
    the first ``FTS_POOL`` matches in storage order. ``None`` for no lexeme."""
    ordered = sorted((statistics.lexemes.get(w, statistics.floor) * rows, -len(w), w) for w in set(lexemes))
    chosen: list[str] = []
    running = 0.0
    for estimate, _, word in ordered:
        running += estimate
        if chosen and running > FTS_POOL:
            break
        chosen.append(word)
    if not chosen:
        return None
    return " | ".join("'" + w.replace("\\", "\\\\").replace("'", "''") + "'" for w in chosen)


def rarest_words(conn: Connection, *, tenant_id: uuid.UUID, query: str, documents: InScope | None = None) -> str:
    """:func:`rare_words` as :func:`search` picks them for the tenant (and ``documents``), for tests and
    diagnostics ("" for none)."""
    rows = _rows(conn, tenant_id, documents, None)
    return rare_words(_lexemes(conn, query), rows=rows, statistics=_statistics(conn)) or ""


def forget_statistics() -> None:
    """Read ``pg_stats`` again at the next search (after an ``ANALYZE`` in a test)."""
    _statistics_cache.clear()


def _lexemes(conn: Connection, query: str) -> list[str]:
    words = " ".join(query_words(query))
    return list(conn.execute(text("SELECT tsvector_to_array(to_tsvector('english', :w))"), {"w": words}).scalar_one())


def _rows(conn: Connection, tenant_id: uuid.UUID, documents: InScope | None, tenant_chunks: int | None) -> float:
    """The chunks a search reads: its scope's, else the tenant's as its documents count them (counted here when
    not given). A count, not an estimate from ``pg_stats``: a tenant that the last ``ANALYZE`` did not see (new,
    or grown since) would be estimated at next to no chunks, so every word of the question would be kept and
    the tier's pool filled in storage order."""
    if documents is not None:
        return float(documents.chunks)
    if tenant_chunks is None:
        tenant_chunks = int(conn.execute(_TENANT_CHUNKS, {"tenant": tenant_id}).scalar_one())
    return float(tenant_chunks)


def _statistics(conn: Connection) -> Statistics:
    """The statistics of ``chunks``, read at most every ``STATISTICS_TTL`` seconds per database."""
    key = conn.engine.url.render_as_string(hide_password=True)
    cached = _statistics_cache.get(key)
    now = time.monotonic()
    if cached is not None and now - cached.read_at < STATISTICS_TTL:
        return cached
    lexemes, shares = conn.exec_driver_sql(_STATISTICS).one()
    if not lexemes or not shares:
        fresh = Statistics({}, 0.0, now)
    else:
        floor = float(shares[len(lexemes)]) if len(shares) > len(lexemes) else 0.0
        fresh = Statistics(dict(zip(lexemes, shares, strict=False)), floor, now)
    _statistics_cache[key] = fresh
    return fresh


def _driver(conn: Connection) -> psycopg.Connection[Any]:
    raw = conn.connection.driver_connection
    if not isinstance(raw, psycopg.Connection):
        raise TypeError(f"search needs a psycopg 3 connection, not {type(raw).__name__}")
    return raw


def query_words(query: str) -> list[str]:
    """The question's words that a chunk may share: not excluded (``-word``), not ``or``; at most
    ``MAX_LOOSE_WORDS``."""
    words = [w for w in _WORD.findall(_EXCLUDED.sub(" ", clean_text(query))) if w.lower() != "or"]
    return words[:MAX_LOOSE_WORDS]


def loose_query(query: str) -> str:
    """The question's words joined by ``or`` (websearch syntax), so a chunk sharing any of them matches."""
    return " or ".join(query_words(query))


def _single_vector(query_vector: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
    vector = np.asarray(query_vector, dtype=np.float32)
    if vector.ndim == 2 and vector.shape[0] == 1:
        vector = vector[0]
    if vector.ndim != 1 or vector.size == 0 or not np.isfinite(vector).all():
        raise ValueError(f"query_vector must be one finite vector, not shape {vector.shape}")
    return vector
