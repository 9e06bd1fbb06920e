"""The metadata filter language: strict validation (no database), and its compiled SQL on the real PostgreSQL:
every operator selects the right documents, a scoped search fills ``top_k`` from them on both the exact and
the HNSW path, user text never reaches the SQL, and the plans use the indexes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import Engine, text

from protostar.documents.filters import MAX_CLAUSES, compile_filter, parse_filter
from protostar.search import EXACT_CHUNKS, Scope, in_scope, search, search_statement
from protostar.settings import Settings
from tests.ingest.test_store_search import Corpus, unit

# --- validation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ([], "a filter is a JSON object"),
        ({"year": {"$between": [1, 2]}}, "unknown operator '$between'"),
        ({"$gt": 3}, "operators go inside a field's object"),
        ({"year": {"$gt": True}}, "takes a number or an ISO 8601 date"),
        ({"year": {"$gt": [1]}}, "takes a number or an ISO 8601 date"),
        ({"when": {"$gte": "last tuesday"}}, "neither a number nor an ISO 8601 date"),
        ({"team": {"$in": "legal"}}, "$in takes a list of 1 to 100 values"),
        ({"team": {"$in": []}}, "$in takes a list of 1 to 100 values"),
        ({"team": {"$in": [{"a": 1}]}}, "not an object or array"),
        ({"team": {"a": {"b": 1}}}, "unknown operator 'a'"),
        ({"team": ["legal"]}, "not an object or array"),
        ({"team": {"$eq": {"x": 1}}}, "not an object or array"),
        ({"draft": {"$exists": "yes"}}, "$exists takes true or false"),
        ({"team": {}}, "an empty object"),
        ({"": 1}, "field names are 1 to 128 characters"),
        ({"year": {"$gt": float("inf")}}, "numbers must be finite"),
        ({"year": float("nan")}, "numbers must be finite"),
        ({"year": {"$in": [1, float("-inf")]}}, "numbers must be finite"),
        ({f"f{i}": i for i in range(MAX_CLAUSES + 1)}, f"at most {MAX_CLAUSES} conditions"),
    ],
)
def test_a_bad_filter_is_refused_with_a_message_that_says_what(bad: Any, says: str) -> None:
    with pytest.raises(ValueError, match=None) as raised:
        parse_filter(bad)
    assert says in str(raised.value)


def test_every_operator_parses() -> None:
    clauses = parse_filter(
        {
            "team": "legal",
            "lang": {"$in": ["en", "de"]},
            "year": {"$gte": 2020, "$lt": 2025},
            "when": {"$gt": "2024-01-01T00:00:00Z"},
            "draft": {"$exists": False},
            "score": {"$eq": 1.5},
        }
    )
    assert [(c.field, c.op) for c in clauses] == [
        ("team", "$eq"),
        ("lang", "$in"),
        ("year", "$gte"),
        ("year", "$lt"),
        ("when", "$gt"),
        ("draft", "$exists"),
        ("score", "$eq"),
    ]
    assert clauses[4].value == "2024-01-01T00:00:00+00:00"


# --- on PostgreSQL --------------------------------------------------------------------------------------------

METADATA = {
    "a": {"team": "legal", "year": 2021, "date": "2024-03-01", "tags": ["x", "y"], "draft": True},
    "b": {"team": "sales", "year": 2019, "date": "2023-12-31T23:00:00+00:00"},
    "c": {"team": "legal", "year": "2021", "date": "not a date"},
    "d": {},
}
CHUNKS = 3


class Docs:
    def __init__(self, corpus: Corpus, model: str) -> None:
        self.corpus = corpus
        self.tenant = corpus.tenant()
        self.ids: dict[str, uuid.UUID] = {}
        for n, (name, metadata) in enumerate(METADATA.items()):
            document_id = corpus.document(self.tenant, f"{name}.txt")
            texts = [f"alpha bravo charlie note {name}{i}" for i in range(CHUNKS)]
            corpus.store(self.tenant, document_id, texts, unit(CHUNKS, 384, n), model=model)
            with corpus.engine.begin() as conn:
                conn.execute(
                    text("UPDATE documents SET metadata = CAST(:m AS jsonb), chunk_count = :n WHERE id = :d"),
                    {"m": json.dumps(metadata), "n": CHUNKS, "d": document_id},
                )
            self.ids[name] = document_id
        self.names = {v: k for k, v in self.ids.items()}

    def matching(self, engine: Engine, raw: dict[str, Any], collections: tuple[uuid.UUID, ...] = ()) -> set[str]:
        scope = Scope(collection_ids=collections, filter=tuple(parse_filter(raw)))
        with engine.connect() as conn:
            found = in_scope(conn, tenant_id=self.tenant, scope=scope)
        return {self.names[d] for d in found.document_ids}


@pytest.fixture(scope="module")
def docs(engine: Engine, settings: Settings) -> Iterator[Docs]:
    corpus = Corpus(engine)
    yield Docs(corpus, settings.embedding_model)
    corpus.cleanup()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, {"a", "b", "c", "d"}),
        ({"team": "legal"}, {"a", "c"}),
        ({"team": {"$eq": "sales"}}, {"b"}),
        ({"year": 2021}, {"a"}),  # "2021", a string, is not the number
        ({"year": "2021"}, {"c"}),
        ({"team": {"$in": ["sales", "ops"]}}, {"b"}),
        ({"tags": "x"}, {"a"}),  # an array field matches a value it contains
        ({"tags": {"$in": ["z", "y"]}}, {"a"}),
        ({"year": {"$gte": 2020}}, {"a"}),
        ({"year": {"$lt": 2020}}, {"b"}),
        ({"year": {"$gt": 2019, "$lte": 2021}}, {"a"}),
        ({"year": {"$gt": 2019.5}}, {"a"}),
        ({"date": {"$gte": "2024-01-01"}}, {"a"}),
        ({"date": {"$lt": "2024-01-01"}}, {"b"}),
        ({"date": {"$gt": "2023-12-31T22:00:00Z"}}, {"a", "b"}),
        ({"date": {"$lte": "2023-12-31T23:00:00Z"}}, {"b"}),
        ({"draft": {"$exists": True}}, {"a"}),
        ({"draft": {"$exists": False}}, {"b", "c", "d"}),
        ({"draft": True}, {"a"}),
        ({"team": "legal", "year": {"$gte": 2020}}, {"a"}),
        ({"team": "nobody"}, set()),
        ({"te'am": "'; DROP TABLE documents; --"}, set()),  # parameters, never SQL text
        ({"date": {"$gt": 5}}, set()),  # a number bound on a date field: no match, no error
    ],
)
def test_each_operator_selects_the_right_documents(
    docs: Docs, engine: Engine, raw: dict[str, Any], expected: set[str]
) -> None:
    assert docs.matching(engine, raw) == expected


def test_collections_scope_and_combine_with_the_filter(docs: Docs, engine: Engine) -> None:
    collection_id = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO collections (id, tenant_id, name) VALUES (:c, :t, 'ab')"),
            {"c": collection_id, "t": docs.tenant},
        )
        for name in ("a", "b"):
            conn.execute(
                text("INSERT INTO collection_documents (collection_id, document_id) VALUES (:c, :d)"),
                {"c": collection_id, "d": docs.ids[name]},
            )
    assert docs.matching(engine, {}, (collection_id,)) == {"a", "b"}
    assert docs.matching(engine, {"team": "legal"}, (collection_id,)) == {"a"}
    assert docs.matching(engine, {}, (uuid.uuid4(),)) == set()


@pytest.mark.parametrize("chunk_count", [CHUNKS, EXACT_CHUNKS])  # the exact path, then the HNSW walk
def test_a_scoped_search_fills_top_k_from_the_scope_only(
    docs: Docs, engine: Engine, settings: Settings, chunk_count: int
) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE documents SET chunk_count = :n WHERE tenant_id = :t"), {"n": chunk_count, "t": docs.tenant}
        )
    scope = Scope(filter=tuple(parse_filter({"team": "legal"})))
    with engine.connect() as conn:
        hits = search(
            conn,
            tenant_id=docs.tenant,
            query="alpha bravo",
            query_vector=unit(1, 384, 99)[0],
            model=settings.embedding_model,
            top_k=2 * CHUNKS,
            scope=scope,
        )
        nothing = search(
            conn,
            tenant_id=docs.tenant,
            query="alpha",
            query_vector=unit(1, 384, 99)[0],
            model=settings.embedding_model,
            top_k=5,
            scope=Scope(filter=tuple(parse_filter({"team": "nobody"}))),
        )
    assert len(hits) == 2 * CHUNKS
    assert {docs.names[h.document_id] for h in hits} == {"a", "c"}
    assert nothing == []


@pytest.fixture(scope="module")
def many(engine: Engine) -> Iterator[uuid.UUID]:
    """A tenant of 5,000 documents (no chunks) in 50 teams, one in ten a draft: enough for real plans."""
    corpus = Corpus(engine)
    tenant = corpus.tenant()
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO documents (id, tenant_id, filename, content_type, size, sha256, object_key, metadata,"
                " chunk_count) SELECT gen_random_uuid(), :t, 'f.txt', 'text/plain', 1, md5(i::text) || md5(:s || i),"
                " 'k', jsonb_build_object('team', 't' || (i % 50), 'n', i)"
                " || CASE WHEN i % 10 = 0 THEN '{\"draft\": true}'::jsonb ELSE '{}'::jsonb END, 40"
                " FROM generate_series(1, 5000) i"
            ),
            {"t": tenant, "s": str(tenant)},
        )
        conn.execute(text("ANALYZE documents"))
    yield tenant
    corpus.cleanup()


def test_the_scope_of_a_filter_is_found_through_the_gin_index(engine: Engine, many: uuid.UUID) -> None:
    """EXPLAIN of the scope query: equality, $in and $exists are answered by ``ix_documents_metadata``."""
    for raw in ({"team": "t7"}, {"team": {"$in": ["t7", "t8"]}}, {"draft": {"$exists": True}, "team": "t3"}):
        compiled = compile_filter(parse_filter(raw))
        with engine.connect() as conn:
            plan = "\n".join(
                row[0]
                for row in conn.exec_driver_sql(
                    f"EXPLAIN SELECT d.id FROM documents d WHERE d.tenant_id = %(tenant)s AND {compiled.sql}",
                    {"tenant": many, **compiled.params},
                )
            )
        assert "ix_documents_metadata" in plan, plan


def test_a_large_scope_walks_the_hnsw_index(engine: Engine, many: uuid.UUID, settings: Settings) -> None:
    """A scope past EXACT_CHUNKS keeps the statement the model's HNSW index can answer on the vector side (the
    filter applied while walking: pgvector's iterative scan), rather than the exact ranking of every chunk of the
    scope. The statement's form is what is checked: this tenant's documents claim their chunks without having
    any, so the planner's own choice here rests on statistics of other tests' rows (it once took the tenant
    index in a full run); the unscoped search's plan is checked in tests/ingest/test_store_search.py."""
    scope = Scope(filter=tuple(parse_filter({"team": {"$in": [f"t{i}" for i in range(25)]}})))
    with engine.connect() as conn:
        found = in_scope(conn, tenant_id=many, scope=scope)
        assert found.chunks > EXACT_CHUNKS
        statement, _ = search_statement(
            conn,
            tenant_id=many,
            query="alpha",
            vector=unit(1, 384, 7)[0],
            model=settings.embedding_model,
            top_k=5,
            candidates=50,
            documents=found,
        )
        exact, _ = search_statement(
            conn,
            tenant_id=many,
            query="alpha",
            vector=unit(1, 384, 7)[0],
            model=settings.embedding_model,
            top_k=5,
            candidates=50,
            documents=replace(found, chunks=EXACT_CHUNKS),
        )
    assert "OFFSET 0" not in statement and "ORDER BY embedding::vector" in statement, statement
    assert "OFFSET 0" in exact  # a scope of at most EXACT_CHUNKS is ranked exactly
