"""Document summaries on the live system and the real local model: refused until the document is ready, and a
document longer than one prompt map-reduced in several calls, its summary then shown with the document."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest
from sqlalchemy import Engine, text

from protostar.summary import fold
from tests.api.test_jobs import wait_status
from tests.conftest import Live
from tests.corpus_files import CORPUS
from tests.ingest.test_documents_api import upload
from tests.sse import read_events

# 15 chunks, about 1,670 tokens: two groups for a 1,500-token prompt, so two map calls and one reduce. The
# smallest corpus document that needs more than one call, to keep this short on the tiny local model.
LONGER_THAN_ONE_PROMPT = CORPUS / "layout-parser-paper-fast.pdf"


@pytest.fixture(scope="module")
def api_module(live: Live) -> Iterator[httpx.Client]:
    with live.client() as client:
        yield client


def summary_jobs(engine: Engine, document_id: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM jobs WHERE kind = 'summary_document' AND payload->>'document_id' = :d"),
                {"d": document_id},
            ).scalar_one()
        )


def test_a_document_that_is_not_ready_is_refused_with_409(api_module: httpx.Client, engine: Engine) -> None:
    body = f"The Quillby lighthouse keeper logs every ship that passes the point. {uuid.uuid4().hex}\n" * 5
    uploaded = upload(api_module, "lighthouse.txt", body.encode())
    wait_status(api_module, uploaded.json()["job_id"], "succeeded", timeout=120)
    document_id, job_id = uploaded.json()["document_id"], uploaded.json()["job_id"]
    try:
        # A document's status is its ingest job's: as a re-ingest leaves it (queued, then running), or a failed one.
        for job_status, status in (("queued", "queued"), ("running", "processing"), ("failed", "failed")):
            with engine.begin() as conn:
                conn.execute(text("UPDATE jobs SET status = :s WHERE id = :j"), {"s": job_status, "j": job_id})
            response = api_module.post(f"/v1/documents/{document_id}/summarize")
            assert response.status_code == 409, (status, response.text)
            error = response.json()["error"]
            assert error["code"] == "conflict" and status in error["message"] and "ready" in error["message"]
        assert summary_jobs(engine, document_id) == 0
    finally:
        with engine.begin() as conn:
            conn.execute(text("UPDATE jobs SET status = 'succeeded' WHERE id = :j"), {"j": job_id})


def test_a_document_longer_than_one_prompt_is_mapped_then_reduced_and_shown(
    api_module: httpx.Client, live: Live
) -> None:
    uploaded = upload(api_module, LONGER_THAN_ONE_PROMPT)
    assert uploaded.status_code in (200, 202), uploaded.text  # 200 when the ingest tests uploaded it first
    wait_status(api_module, uploaded.json()["job_id"], "succeeded", timeout=180)
    document_id = uploaded.json()["document_id"]
    document = api_module.get(f"/v1/documents/{document_id}").json()
    assert document["status"] == "ready" and document["summary"] is None

    accepted = api_module.post(f"/v1/documents/{document_id}/summarize")
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    job = wait_status(api_module, job_id, "succeeded", "failed", timeout=300)
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    assert isinstance(result, dict) and result["summary"].strip()
    budget = fold.text_budget(fold.DOCUMENT, live.settings.chat_prompt_tokens)
    assert result["chunks"] == document["chunk_count"]
    assert result["tokens_before"] > budget  # more than one call can carry
    assert 0 < result["tokens_after"] <= live.settings.summary_max_tokens < result["tokens_before"]
    assert result["llm_calls"] >= 3

    progress = [e.data for e in read_events(api_module, job_id) if e.event == "progress"]
    stages = [p["stage"] for i, p in enumerate(progress) if i == 0 or progress[i - 1]["stage"] != p["stage"]]
    assert stages[0] == "map" and len(stages) >= 2 and set(stages[1:]) == {"reduce"}, stages
    mapped = [p for p in progress if p["stage"] == "map"][-1]
    assert mapped["done"] == mapped["total"] >= 2 and result["llm_calls"] > mapped["total"]
    assert progress[-1]["done"] == progress[-1]["total"] == 1  # the last round leaves one summary

    summary = api_module.get(f"/v1/documents/{document_id}").json()["summary"]
    assert summary["content"] == result["summary"]
    assert (summary["tokens_before"], summary["tokens_after"], summary["chunk_count"]) == (
        result["tokens_before"],
        result["tokens_after"],
        result["chunks"],
    )
    assert datetime.fromisoformat(summary["created_at"]) >= datetime.fromisoformat(str(job["started_at"]))
    listed = api_module.get("/v1/documents", params={"limit": 100}).json()["items"]
    assert all("summary" not in d for d in listed)  # the list stays cheap
