"""After a change of embedding model, documents embedded by the old one are ingested again, a few at a time, and
are found by search again (live stack; the old model is made by hand in the tables; beat's runs are called
here, as the live stack runs no beat)."""

from __future__ import annotations

import time
import uuid

import httpx
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

import celeryconfig
from protostar.constants import TaskName
from protostar.documents.reembed import REASON, reembed
from protostar.jobs.dispatch import Dispatcher
from tests.api.test_jobs import wait_status
from tests.conftest import Live
from tests.ingest.test_documents_api import upload

OLD = "an-older-model"


def test_beat_looks_for_documents_of_another_model() -> None:
    entry = celeryconfig.beat_schedule["reembed-documents"]
    assert entry["task"] == TaskName.REEMBED.value and entry["options"]["queue"] == "maintenance"


def test_documents_of_another_model_are_ingested_again_a_few_at_a_time(
    api: httpx.Client, engine: Engine, live: Live, dispatcher: Dispatcher
) -> None:
    word = f"zorblax{uuid.uuid4().hex[:8]}"
    documents = {}
    for i in range(3):
        uploaded = upload(api, f"model-{i}.txt", f"The {word} gauge number {i} reads {i * 7} bars.\n".encode() * 3)
        assert uploaded.status_code == 202, uploaded.text
        documents[uploaded.json()["document_id"]] = uploaded.json()["job_id"]
    for job_id in documents.values():
        wait_status(api, job_id, "succeeded", timeout=120)
    ids = list(documents)
    with engine.begin() as conn:  # as if embedded before PROTOSTAR_EMBEDDING_MODEL changed
        conn.execute(
            text("UPDATE chunks SET embedding_model = :m WHERE document_id::text = ANY(:ids)"), {"m": OLD, "ids": ids}
        )
        conn.execute(
            text("UPDATE documents SET embedding_model = :m WHERE id::text = ANY(:ids)"), {"m": OLD, "ids": ids}
        )
    found = {h["document_id"] for h in api.post("/v1/search", json={"query": f"{word} gauge"}).json()["hits"]}
    assert not found & set(ids)  # search reads the configured model's chunks only
    # Beat's runs, at most 2 in flight: the documents are queued again, 2 at first, the third once one ended.
    most_in_flight, queued, deadline = 0, [], time.monotonic() + 240
    while time.monotonic() < deadline:
        with Session(engine) as session:
            now = reembed(session, dispatcher=dispatcher, model=live.settings.embedding_model, in_flight=2)
        assert len(now) <= 2
        queued += [str(d) for d in now if str(d) in ids]
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT d.id::text, d.embedding_model, j.status, j.payload->>'reason' FROM documents d"
                    " JOIN jobs j ON j.id = d.job_id WHERE d.id::text = ANY(:ids)"
                ),
                {"ids": ids},
            ).all()
            in_flight = conn.execute(
                text(
                    "SELECT count(*) FROM jobs WHERE kind = 'ingest' AND status IN ('queued', 'running')"
                    " AND payload->>'reason' = :r"
                ),
                {"r": REASON},
            ).scalar_one()
        most_in_flight = max(most_in_flight, in_flight)
        if all(model == live.settings.embedding_model and status == "succeeded" for _, model, status, _ in rows):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"not ingested again: {rows}")
    assert most_in_flight <= 2
    assert sorted(queued) == sorted(ids)  # each once: a run while one is in flight does not queue it twice
    assert all(reason == REASON for *_, reason in rows)  # a new ingest job each, the same document ids
    assert {row[0] for row in rows} == set(ids)
    for document_id in ids:
        document = api.get(f"/v1/documents/{document_id}").json()
        assert document["status"] == "ready" and document["chunk_count"] >= 1, document
    with engine.connect() as conn:
        models = conn.execute(
            text("SELECT DISTINCT embedding_model FROM chunks WHERE document_id::text = ANY(:ids)"), {"ids": ids}
        ).scalars()
        assert list(models) == [live.settings.embedding_model]  # the old chunks were replaced, not added to
    hits = api.post("/v1/search", json={"query": f"{word} gauge", "top_k": 5}).json()
    assert set(ids) <= {h["document_id"] for h in hits["hits"]}, hits
