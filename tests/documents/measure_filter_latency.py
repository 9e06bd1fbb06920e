"""Filtered against unfiltered ``search()`` latency, printed (no assertion on time). Not part of the suite (its
name does not start with ``test_``); run it on its own:

    PYTHONPATH=$PWD .venv/bin/python -m pytest tests/documents/measure_filter_latency.py -s

A tenant of 300 documents of 100 chunks (random unit vectors, a few words from a small vocabulary) with metadata
``team`` (10 values), ``year`` (25), ``rare`` (1 in 100), and a collection of 50 of them; 20 random query
vectors, 2 timed rounds after one warm-up, ``top_k`` 5. "short" counts searches that returned fewer than 5 hits.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid

import numpy as np
import pytest
from sqlalchemy import Engine, text

from protostar.documents.filters import parse_filter
from protostar.embeddings.index import index_name
from protostar.ingest.store import replace_chunks
from protostar.search import EXACT_CHUNKS, Scope, in_scope, search
from protostar.settings import Settings
from tests.ingest.test_store_search import Corpus, Piece

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo"]


@pytest.mark.timeout(1500)
def test_latency(engine: Engine, settings: Settings) -> None:
    model = settings.embedding_model
    corpus = Corpus(engine)
    tenant = corpus.tenant()
    rng = np.random.default_rng(1)
    docs = []
    for d in range(300):
        doc = corpus.document(tenant, f"d{d}.txt")
        docs.append(doc)
        vecs = rng.standard_normal((100, 384)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        texts = [" ".join(rng.choice(WORDS, 12)) + f" doc{d} n{i}" for i in range(100)]
        with engine.begin() as conn:
            replace_chunks(
                conn,
                document_id=doc,
                tenant_id=tenant,
                chunks=[Piece(i, t) for i, t in enumerate(texts)],
                vectors=vecs,
                model=model,
            )
            meta = {"team": f"t{d % 10}", "year": 2000 + d % 25, "n": d}
            if d % 100 == 0:
                meta["rare"] = True
            conn.execute(
                text("UPDATE documents SET metadata = CAST(:m AS jsonb), chunk_count = 100 WHERE id = :d"),
                {"m": json.dumps(meta), "d": doc},
            )
    cid = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO collections (id, tenant_id, name) VALUES (:c, :t, 'c')"), {"c": cid, "t": tenant}
        )
        for doc in docs[:50]:
            conn.execute(
                text("INSERT INTO collection_documents (collection_id, document_id) VALUES (:c, :d)"),
                {"c": cid, "d": doc},
            )
    print(f"\n{len(docs) * 100} chunks of {model} ({index_name(model)})")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE chunks"))
        conn.execute(text("VACUUM ANALYZE documents"))
    cases = {
        "none": None,
        "team = t3 (10%)": Scope(filter=tuple(parse_filter({"team": "t3"}))),
        "year >= 2005 (80%)": Scope(filter=tuple(parse_filter({"year": {"$gte": 2005}}))),
        "year < 2012 (48%)": Scope(filter=tuple(parse_filter({"year": {"$lt": 2012}}))),
        "year $in 2 years and team (0.8%)": Scope(
            filter=tuple(parse_filter({"year": {"$in": [2001, 2002]}, "team": "t1"}))
        ),
        "rare $exists (1%)": Scope(filter=tuple(parse_filter({"rare": {"$exists": True}}))),
        "a collection of 50 documents": Scope(collection_ids=(cid,)),
        "team $in 3 teams (30%)": Scope(filter=tuple(parse_filter({"team": {"$in": ["t3", "t4", "t5"]}}))),
    }
    queries = [rng.standard_normal(384).astype(np.float32) for _ in range(20)]
    for name, scope in cases.items():
        size = "all"
        if scope is not None:
            with engine.connect() as conn:
                found = in_scope(conn, tenant_id=tenant, scope=scope)
            size = f"{found.chunks} chunks {'exact' if found.chunks <= EXACT_CHUNKS else 'hnsw'}"
        label = f"{name} [{size}]"
        times, short = [], 0
        for rep in range(3):
            for q in queries:
                started = time.perf_counter()
                with engine.connect() as conn:
                    hits = search(
                        conn,
                        tenant_id=tenant,
                        query="alpha bravo kilo",
                        query_vector=q,
                        model=model,
                        top_k=5,
                        scope=scope,
                    )
                if rep:
                    times.append((time.perf_counter() - started) * 1000)
                short += len(hits) < 5
        times.sort()
        p99 = times[int(len(times) * 0.99) - 1]
        print(f"{label:60s} p50 {statistics.median(times):6.1f} ms  p99 {p99:6.1f} ms  short {short}")
    corpus.cleanup()
