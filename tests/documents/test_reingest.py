"""``POST /v1/documents/{id}/reingest`` on the live stack: the stored file is ingested again under the same id,
its chunks replaced by one new set; ``409`` while an ingest of it is in flight; another tenant's is ``404``; the
client's ``documents.reingest``."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import Engine, text

from protostar.client import Client
from tests.api.test_auth import create_key
from tests.api.test_jobs import wait_status
from tests.conftest import Live
from tests.ingest.test_documents_api import upload


def _chunks(engine: Engine, document_id: str) -> list[tuple[int, int, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, ordinal, text FROM chunks WHERE document_id = :d ORDER BY ordinal"), {"d": document_id}
        ).all()
    return [(r.id, r.ordinal, r.text) for r in rows]


def test_a_ready_document_is_ingested_again_under_its_id_with_one_new_set_of_chunks(
    api: httpx.Client, engine: Engine
) -> None:
    word = f"glimmerstone{uuid.uuid4().hex[:8]}"
    body = "".join(f"Paragraph {i}: the {word} quarry shipped {i * 11} tonnes that year.\n\n" for i in range(200))
    uploaded = upload(api, "quarry.txt", body.encode())
    assert uploaded.status_code == 202, uploaded.text
    document_id, first_job = uploaded.json()["document_id"], uploaded.json()["job_id"]
    wait_status(api, first_job, "succeeded", timeout=180)
    before = _chunks(engine, document_id)
    assert before

    again = api.post(f"/v1/documents/{document_id}/reingest")
    assert again.status_code == 202, again.text
    job_id = again.json()["job_id"]
    assert job_id != first_job and again.json()["events_url"].endswith(f"/v1/jobs/{job_id}/events")
    # While it is in flight, asking again is refused, and the document follows the new job.
    busy = api.post(f"/v1/documents/{document_id}/reingest")
    document = api.get(f"/v1/documents/{document_id}").json()
    if document["status"] in ("queued", "processing"):
        assert busy.status_code == 409, busy.text
        assert document["job_id"] == job_id
    job = wait_status(api, job_id, "succeeded", timeout=180)
    assert job["kind"] == "ingest"

    after = _chunks(engine, document_id)
    assert [(o, t) for _, o, t in after] == [(o, t) for _, o, t in before]  # the same text, one set
    assert not {i for i, _, _ in after} & {i for i, _, _ in before}  # every chunk written anew
    document = api.get(f"/v1/documents/{document_id}").json()
    assert document["status"] == "ready" and document["job_id"] == job_id
    assert document["chunk_count"] == len(after)
    with engine.connect() as conn:
        reason = conn.execute(text("SELECT payload->>'reason' FROM jobs WHERE id = :j"), {"j": job_id}).scalar()
    assert reason == "reingest"
    hits = api.post("/v1/search", json={"query": f"{word} quarry tonnes", "top_k": 50}).json()["hits"]
    mine = [h for h in hits if h["document_id"] == document_id]
    assert mine and len({h["chunk_id"] for h in mine}) == len(mine)


def test_reingest_answers_404_for_another_tenants_document_and_for_none(live: Live, api: httpx.Client) -> None:
    uploaded = upload(api, "mine.txt", f"A note that belongs to one tenant only. {uuid.uuid4()}".encode())
    document_id = uploaded.json()["document_id"]
    wait_status(api, uploaded.json()["job_id"], "succeeded", timeout=180)
    with live.client(create_key(f"reingest-{uuid.uuid4().hex[:8]}")) as other:
        assert other.post(f"/v1/documents/{document_id}/reingest").status_code == 404
    assert api.post(f"/v1/documents/{uuid.uuid4()}/reingest").status_code == 404
    assert api.get(f"/v1/documents/{document_id}").json()["job_id"] == uploaded.json()["job_id"]


def test_the_client_reingests_a_document(live: Live) -> None:
    with Client(live.api_url, live.admin_key) as client:
        upload = client.upload(
            f"A short note to ingest twice. {uuid.uuid4()}".encode(), filename="twice.txt", wait=True
        )
        accepted = client.documents.reingest(upload.document.id)
        assert accepted.job_id != upload.job_id
        assert client.jobs.wait(accepted.job_id, timeout=180).status == "succeeded"
        assert client.documents.get(upload.document.id).job_id == accepted.job_id
