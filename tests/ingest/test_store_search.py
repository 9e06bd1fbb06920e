"""Chunk storage (COPY, replace, per-model indexes) and hybrid search, on the real PostgreSQL + pgvector."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Connection, Engine, insert, text, update

from protostar import search as search_module
from protostar.db.models import Document, Tenant
from protostar.embeddings.embed import LocalEmbedder
from protostar.embeddings.index import ensure_configured_index, ensure_vector_index, hashed_index_name, index_name
from protostar.ingest.store import delete_document_chunks, replace_chunks
from protostar.search import RRF_K, Hit, candidate_lists, loose_query, search, search_statement
from protostar.settings import Settings

MODEL = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class Piece:
    """The shape of protostar.ingest.chunk's chunks, as far as the store cares."""

    ordinal: int
    text: str
    page: int | None = 1
    element_types: list[str] = field(default_factory=lambda: ["NarrativeText"])
    token_count: int = 10


class Corpus:
    """Tenants and documents made for one test module, removed afterwards (chunks go with their documents)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.tenants: list[uuid.UUID] = []

    def tenant(self) -> uuid.UUID:
        tenant_id = uuid.uuid4()
        with self.engine.begin() as conn:
            conn.execute(insert(Tenant).values(id=tenant_id, name=f"test-search-{tenant_id}"))
        self.tenants.append(tenant_id)
        return tenant_id

    def document(self, tenant_id: uuid.UUID, filename: str = "doc.txt") -> uuid.UUID:
        document_id = uuid.uuid4()
        with self.engine.begin() as conn:
            conn.execute(
                insert(Document).values(
                    id=document_id,
                    tenant_id=tenant_id,
                    filename=filename,
                    content_type="text/plain",
                    size=1,
                    sha256=hashlib.sha256(document_id.bytes).hexdigest(),
                    object_key=f"test/{document_id}",
                )
            )
        return document_id

    def store(
        self,
        tenant_id: uuid.UUID,
        document_id: uuid.UUID,
        texts: Sequence[str],
        vectors: np.ndarray[Any, Any],
        model: str = MODEL,
    ) -> int:
        with self.engine.begin() as conn:
            stored = replace_chunks(
                conn,
                document_id=document_id,
                tenant_id=tenant_id,
                chunks=[Piece(i, t) for i, t in enumerate(texts)],
                vectors=vectors,
                model=model,
            )
            # the document's count, as an ingest records it: the search sizes a tenant by its documents' counts
            conn.execute(update(Document).where(Document.id == document_id).values(chunk_count=len(texts)))
            return stored

    def cleanup(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(text("DELETE FROM tenants WHERE id = ANY(:ids)"), {"ids": self.tenants})


@pytest.fixture(scope="module")
def corpus(engine: Engine) -> Iterator[Corpus]:
    corpus = Corpus(engine)
    yield corpus
    corpus.cleanup()


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder(batch_size=16)


def unit(rows: int, dim: int, seed: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    vectors = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    unit_rows: np.ndarray[Any, np.dtype[np.float32]] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit_rows


def find(
    engine: Engine,
    tenant_id: uuid.UUID,
    query: str,
    vector: np.ndarray[Any, Any],
    *,
    model: str = MODEL,
    top_k: int = 5,
) -> list[Hit]:
    with engine.connect() as conn:
        return search(conn, tenant_id=tenant_id, query=query, query_vector=vector, model=model, top_k=top_k)


def chunk_rows(conn: Connection, document_id: uuid.UUID) -> list[Any]:
    return list(
        conn.execute(
            text(
                "SELECT ordinal, text, page, element_types, token_count, embedding_model, embedding::text "
                "FROM chunks WHERE document_id = :id ORDER BY ordinal"
            ),
            {"id": document_id},
        )
    )


# --- store ----------------------------------------------------------------------------------------------


def test_replacing_twice_leaves_exactly_the_second_set(engine: Engine, corpus: Corpus) -> None:
    tenant = corpus.tenant()
    doc = corpus.document(tenant)
    assert corpus.store(tenant, doc, ["one", "two", "three"], unit(3, 384, 1)) == 3
    assert corpus.store(tenant, doc, ["uno", "dos"], unit(2, 384, 2)) == 2
    with engine.connect() as conn:
        rows = chunk_rows(conn, doc)
    assert [(r.ordinal, r.text) for r in rows] == [(0, "uno"), (1, "dos")]


def test_replace_writes_within_the_callers_transaction(engine: Engine, corpus: Corpus) -> None:
    tenant = corpus.tenant()
    doc = corpus.document(tenant)
    corpus.store(tenant, doc, ["kept"], unit(1, 384, 3))
    with engine.connect() as conn:
        replace_chunks(
            conn, document_id=doc, tenant_id=tenant, chunks=[Piece(0, "lost")], vectors=unit(1, 384, 4), model=MODEL
        )
        conn.rollback()
        assert [r.text for r in chunk_rows(conn, doc)] == ["kept"]
        assert delete_document_chunks(conn, document_id=doc) == 1
        conn.commit()
        assert chunk_rows(conn, doc) == []


def test_copy_keeps_odd_characters_and_exact_vectors(engine: Engine, corpus: Corpus) -> None:
    tenant = corpus.tenant()
    doc = corpus.document(tenant)
    odd = "tab\there\nnew line\r\\N back\\slash \\. \"quotes\" 'single' ünï 🚀 nul\x00byte \x01ctl \udc80lone"
    chunks = [
        Piece(0, odd, page=None, element_types=["Title", "a,b", 'q"uote', "{brace}", "NULL", ""], token_count=7),
        Piece(1, "\\", page=3, element_types=[]),
    ]
    vectors = unit(2, 384, 5)
    vectors[1, :3] = [1e-30, -0.0, 3.4e38]  # extremes of float32 survive the text form
    with engine.begin() as conn:
        replace_chunks(conn, document_id=doc, tenant_id=tenant, chunks=chunks, vectors=vectors, model=MODEL)
    with engine.connect() as conn:
        first, second = chunk_rows(conn, doc)
    assert first.text == odd.replace("\x00", "").replace("\udc80", "?")
    assert (first.page, first.token_count, first.embedding_model) == (None, 7, MODEL)
    assert first.element_types == ["Title", "a,b", 'q"uote', "{brace}", "NULL", ""]
    assert (second.text, second.page, second.element_types) == ("\\", 3, [])
    stored = np.array([np.array(row.embedding.strip("[]").split(","), dtype=np.float32) for row in (first, second)])
    np.testing.assert_array_equal(stored, vectors)


def test_replace_refuses_mismatched_vectors(engine: Engine, corpus: Corpus) -> None:
    tenant = corpus.tenant()
    doc = corpus.document(tenant)
    with engine.connect() as conn, pytest.raises(ValueError, match="shape"):
        replace_chunks(
            conn, document_id=doc, tenant_id=tenant, chunks=[Piece(0, "a")], vectors=unit(2, 384, 6), model=MODEL
        )


def test_index_names_fit_and_match_the_migration() -> None:
    assert index_name(MODEL) == "ix_chunks_hnsw_all_minilm_l6_v2"
    long = "organisation/" + "very-long-model-name-" * 5
    assert len(index_name(long)) == 63
    assert index_name(long) != index_name(long + "x")
    assert hashed_index_name("a-b") != hashed_index_name("a.b")


# --- search -----------------------------------------------------------------------------------------------

FACTS = [
    "Refunds are issued to the original payment method within five business days.",
    "The office is closed on public holidays and reopens the following morning.",
    "Passwords must be at least twelve characters long and rotated every ninety days.",
    "Our headquarters moved to a larger building near the central train station.",
    "Employees accrue two vacation days for every month of service.",
    "The support team answers tickets in the order they were received.",
    "Invoices are sent by email at the start of each billing period.",
    "Shipping to remote islands can take up to three weeks.",
    "Servers are backed up every night and copies are kept for thirty days.",
    "Laptops must be encrypted before they leave the building.",
    "The cafeteria serves vegetarian meals every day of the week.",
]
# Codes that look alike to an embedding: only exact words tell them apart.
CODES = ["ZX-4471Q", "ZX-4417Q", "ZX-4741Q", "ZX-4471R", "XZ-4471Q", "ZX-4477Q", "ZX-7441Q", "ZX-1447Q"]
MEANINGS = [
    "the cooling fan stopped",
    "the power supply overheated",
    "the disk is full",
    "the cable is unplugged",
    "the battery is failing",
    "the firmware is outdated",
    "the memory test failed",
    "the door is open",
]
FACTS += [f"Error {code} means {meaning}." for code, meaning in zip(CODES, MEANINGS, strict=True)]
REFUND, BACKUPS, FAN = FACTS[0], FACTS[8], FACTS[11]


@pytest.fixture(scope="module")
def facts(corpus: Corpus, embedder: LocalEmbedder) -> tuple[uuid.UUID, uuid.UUID, np.ndarray[Any, Any]]:
    tenant = corpus.tenant()
    doc = corpus.document(tenant, "handbook.pdf")
    vectors = embedder.embed(FACTS)
    corpus.store(tenant, doc, FACTS, vectors)
    return tenant, doc, vectors


def test_hybrid_finds_a_paraphrase_that_full_text_misses(
    engine: Engine, embedder: LocalEmbedder, facts: tuple[uuid.UUID, uuid.UUID, np.ndarray[Any, Any]]
) -> None:
    tenant, doc, _ = facts
    question = "How can I get my money returned?"
    with engine.connect() as conn:
        matches = conn.execute(
            text("SELECT count(*) FROM chunks WHERE document_id = :d AND tsv @@ websearch_to_tsquery('english', :q)"),
            {"d": doc, "q": loose_query(question)},
        ).scalar()
    assert matches == 0  # no word in common: only the vector side can find it
    hits = find(engine, tenant, question, embedder.embed([question])[0], top_k=3)
    assert hits[0].text == REFUND
    assert (hits[0].document_id, hits[0].filename, hits[0].page) == (doc, "handbook.pdf", 1)


def test_hybrid_finds_a_rare_term_that_the_vector_side_misses(
    engine: Engine, embedder: LocalEmbedder, facts: tuple[uuid.UUID, uuid.UUID, np.ndarray[Any, Any]]
) -> None:
    tenant, _, vectors = facts
    question = "What does error ZX-4471Q mean?"
    query_vector = embedder.embed([question])[0]
    by_vector = [FACTS[i] for i in np.argsort(-(vectors @ query_vector))]
    assert by_vector.index(FAN) >= 3  # the embedding alone ranks it out of the top 3
    hits = find(engine, tenant, question, query_vector, top_k=3)
    assert FAN in [h.text for h in hits]
    assert hits == sorted(hits, key=lambda h: -h.score)


def test_a_long_question_still_matches_on_some_of_its_words(
    engine: Engine, facts: tuple[uuid.UUID, uuid.UUID, np.ndarray[Any, Any]]
) -> None:
    tenant, _, _ = facts
    question = "please tell me honestly how often are the servers backed up around here"
    far_away = unit(1, 384, 7)[0]  # a vector pointing nowhere useful: full text has to carry it
    hits = find(engine, tenant, question, far_away, top_k=1)
    assert hits[0].text == BACKUPS


def test_the_candidate_lists_are_what_search_fuses(
    engine: Engine, embedder: LocalEmbedder, facts: tuple[uuid.UUID, uuid.UUID, np.ndarray[Any, Any]]
) -> None:
    tenant, _, _ = facts
    question = "What does error ZX-4471Q mean?"
    vector = embedder.embed([question])[0]
    with engine.begin() as conn:
        lists = candidate_lists(conn, tenant_id=tenant, query=question, query_vector=vector, model=MODEL)
    assert len(lists.vector) == len(FACTS)  # a small tenant: every chunk, by exact distance
    assert [d for _, d in lists.vector] == sorted(d for _, d in lists.vector)
    assert [t for _, t, _ in lists.full_text] == sorted(t for _, t, _ in lists.full_text)  # every word first
    score: dict[int, float] = {}
    for ranked in ([i for i, _ in lists.vector], [i for i, _, _ in lists.full_text]):
        for rank, chunk_id in enumerate(ranked, start=1):
            score[chunk_id] = score.get(chunk_id, 0.0) + 1 / (RRF_K + rank)
    fused = sorted(score, key=lambda i: (-score[i], i))[:5]
    assert [h.chunk_id for h in find(engine, tenant, question, vector)] == fused


def test_search_never_returns_another_tenants_chunks(engine: Engine, corpus: Corpus, embedder: LocalEmbedder) -> None:
    mine, theirs = corpus.tenant(), corpus.tenant()
    secret = "The launch code for project Bluebird is kept in the red binder."
    corpus.store(theirs, corpus.document(theirs), [secret], embedder.embed([secret]))
    corpus.store(mine, corpus.document(mine), ["Bluebirds nest in spring."], embedder.embed(["Bluebirds nest"]))
    hits = find(engine, mine, "launch code Bluebird red binder", embedder.embed([secret])[0], top_k=10)
    assert [h.text for h in hits] == ["Bluebirds nest in spring."]
    assert find(engine, corpus.tenant(), secret, embedder.embed([secret])[0]) == []


def test_a_second_models_vectors_never_mix_with_the_first(
    engine: Engine, corpus: Corpus, embedder: LocalEmbedder
) -> None:
    ensure_vector_index(engine, model="test-8d", dim=8)
    ensure_vector_index(engine, model="test-8d", dim=8)  # idempotent
    with engine.connect() as conn:
        valid = conn.execute(
            text("SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_chunks_hnsw_test_8d'::regclass")
        ).scalar()
    assert valid is True
    tenant = corpus.tenant()
    text_ = "Quantum widgets are calibrated weekly."
    small, large = corpus.document(tenant, "small.txt"), corpus.document(tenant, "large.txt")
    corpus.store(tenant, small, [text_], unit(1, 8, 8), model="test-8d")
    corpus.store(tenant, large, [text_], embedder.embed([text_]))
    eight = find(engine, tenant, text_, unit(1, 8, 9)[0], model="test-8d")
    default = find(engine, tenant, text_, embedder.embed([text_])[0])
    assert [h.filename for h in eight] == ["small.txt"]
    assert [h.filename for h in default] == ["large.txt"]


def test_the_default_model_search_uses_its_hnsw_index(engine: Engine, corpus: Corpus, settings: Settings) -> None:
    """The configured (default) model's index, made at start-up and holding every tenant's chunks of that model."""
    model = settings.embedding_model
    tenant = corpus.tenant()
    doc = corpus.document(tenant)
    corpus.store(tenant, doc, [f"filler chunk number {i}" for i in range(3000)], unit(3000, 384, 10), model=model)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE chunks"))
    with engine.connect() as conn:
        statement, params = search_statement(
            conn, tenant_id=tenant, query="filler", vector=unit(1, 384, 11)[0], model=model, top_k=5, candidates=50
        )
        plan = "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, params))
    assert index_name(model) in plan, plan


def test_a_switch_of_model_gets_its_index_at_start_up_and_search_uses_it(
    engine: Engine, corpus: Corpus, settings: Settings
) -> None:
    """After PROTOSTAR_EMBEDDING_MODEL changes, what `protostar migrate`, the API and each worker run at start-up
    makes the new model's HNSW index, and the search's plan walks it."""
    model = "test-switch-16d"
    switched = settings.model_copy(
        update={
            "embedding_provider": "openai",
            "embedding_base_url": "http://127.0.0.1:9/v1",
            "embedding_model": model,
            "embedding_dim": 16,
        }
    )
    ensure_configured_index(switched)
    tenant = corpus.tenant()
    doc = corpus.document(tenant)
    corpus.store(tenant, doc, [f"switched chunk number {i}" for i in range(3000)], unit(3000, 16, 12), model=model)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE chunks"))
    with engine.connect() as conn:
        statement, params = search_statement(
            conn, tenant_id=tenant, query="switched", vector=unit(1, 16, 13)[0], model=model, top_k=5, candidates=50
        )
        plan = "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, params))
    assert index_name(model) in plan, plan


def test_concurrent_index_builds_for_one_model_make_one_valid_index(engine: Engine) -> None:
    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(ensure_vector_index, engine, model="test-4d", dim=4) for _ in range(2)]:
            future.result(timeout=120)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE i.indrelid = 'chunks'::regclass AND pg_get_indexdef(i.indexrelid) LIKE '%''test-4d''%'"
            )
        ).all()
    assert [tuple(r) for r in rows] == [("ix_chunks_hnsw_test_4d", True)]


def test_the_any_word_tier_ranks_the_chunks_of_the_rarest_words_not_the_first_stored(
    engine: Engine, corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the question's words match more chunks than a tier ranks (``FTS_POOL``), the "any word" tier takes
    the chunks holding its rarest words (by the planner's statistics of ``chunks.tsv``), not the first matches
    in storage order: here the one chunk with the rare word, stored after 3,000 chunks with the common one."""
    monkeypatch.setattr(search_module, "FTS_POOL", 100)
    tenant = corpus.tenant()
    doc = corpus.document(tenant)
    fillers = [f"widget inventory line {i}" for i in range(3000)]
    target = "The zanzibar ledger lists every shipment."
    corpus.store(tenant, doc, [*fillers, target], unit(3001, 384, 14))
    with engine.begin() as conn:
        conn.execute(text("ANALYZE chunks"))
    search_module.forget_statistics()
    far_away = unit(1, 384, 15)[0]  # the vector side ranks noise: full text has to find it
    hits = find(engine, tenant, "widget zanzibar", far_away, top_k=5)
    assert target in [h.text for h in hits]
    with engine.connect() as conn:
        assert search_module.rarest_words(conn, tenant_id=tenant, query="widget zanzibar") == "'zanzibar'"
        # a tenant with no chunks (far fewer than the pool) keeps every word
        assert search_module.rarest_words(conn, tenant_id=uuid.uuid4(), query="widget zanzibar") in (
            "'widget' | 'zanzibar'",
            "'zanzibar' | 'widget'",
        )


def test_a_tenant_the_statistics_have_not_seen_is_sized_by_its_chunk_count(
    engine: Engine, corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tenant whose chunks came after the last ``ANALYZE`` is absent from ``pg_stats``: estimated from them it
    would hold next to no chunks, every word would be kept, and the tier's pool filled in storage order. Its
    documents' count sizes it instead, so it gets its rarest words like any tenant."""
    monkeypatch.setattr(search_module, "FTS_POOL", 100)
    seen = corpus.tenant()
    corpus.store(seen, corpus.document(seen), [f"gadget catalogue row {i}" for i in range(3000)], unit(3000, 384, 16))
    with engine.begin() as conn:
        conn.execute(text("ANALYZE chunks"))
    search_module.forget_statistics()
    with engine.connect() as conn:
        search_module.rarest_words(conn, tenant_id=seen, query="gadget")  # statistics read (and cached) now
    new = corpus.tenant()
    target = "The quokka register lists every gadget."
    corpus.store(
        new, corpus.document(new), [*(f"gadget catalogue row {i}" for i in range(3000)), target], unit(3001, 384, 17)
    )
    with engine.connect() as conn:
        assert search_module.rarest_words(conn, tenant_id=new, query="gadget quokka") == "'quokka'"
    hits = find(engine, new, "gadget quokka", unit(1, 384, 18)[0], top_k=5)
    assert target in [h.text for h in hits]


def test_rare_words_keep_the_rarest_within_the_pool() -> None:
    statistics = search_module.Statistics(lexemes={"common": 0.5, "usual": 0.1, "rare": 0.001}, floor=0.001)
    pick = search_module.rare_words
    # estimates: rare 10, unlisted 10 each (the longer first), usual 1,000, common 5,000; the pool is 1,000
    assert pick(["common", "usual", "rare", "zed"], rows=10_000, statistics=statistics) == "'rare' | 'zed'"
    assert pick(["common", "usual"], rows=10_000, statistics=statistics) == "'usual'"
    assert pick(["common"], rows=10_000, statistics=statistics) == "'common'"  # the rarest, always
    assert pick(["common", "usual", "rare"], rows=100, statistics=statistics) == "'rare' | 'usual' | 'common'"
    assert pick(["o'neil"], rows=0, statistics=search_module.Statistics({}, 0.0)) == "'o''neil'"
    assert pick([], rows=100, statistics=statistics) is None


def test_a_small_tenant_is_ranked_exactly_on_the_vector_side(engine: Engine, settings: Settings) -> None:
    """The HNSW walk filtered by tenant gives up after hnsw.max_scan_tuples: a tenant of at most EXACT_CHUNKS
    chunks is ranked exactly (its own rows, every distance), so other tenants' chunks never crowd it out."""
    from protostar.search import EXACT_CHUNKS

    forms = {}
    with engine.connect() as conn:
        for chunks in (EXACT_CHUNKS, EXACT_CHUNKS + 1, None):
            statement, _ = search_statement(
                conn,
                tenant_id=uuid.uuid4(),
                query="alpha",
                vector=unit(1, 384, 7)[0],
                model=settings.embedding_model,
                top_k=5,
                candidates=50,
                tenant_chunks=chunks,
            )
            forms[chunks] = "OFFSET 0" in statement
    assert forms == {EXACT_CHUNKS: True, EXACT_CHUNKS + 1: False, None: False}
