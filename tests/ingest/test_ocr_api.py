"""Scans over HTTP on the live system: a PDF without a text layer and a PNG are read by OCR in the ingest
worker, their facts become searchable with their page numbers, and pages over the OCR cap (2 in the tests'
settings) are skipped with a note while the job succeeds."""

from __future__ import annotations

import httpx
import pytest

from tests.api.test_jobs import wait_status
from tests.ingest.scans import FACTS, png, scanned_pdf
from tests.ingest.test_documents_api import upload

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def api(own_api: httpx.Client) -> httpx.Client:
    """A tenant of each test's own: the shared admin tenant holds other tests' documents with the same facts
    (a top-5 search there need not reach this one's chunks)."""
    return own_api


def ingest(api: httpx.Client, name: str, content: bytes) -> dict[str, object]:
    response = upload(api, name, content)
    assert response.status_code == 202, response.text
    return wait_status(api, str(response.json()["job_id"]), "succeeded", "failed", timeout=240)


def squeezed(text: str) -> str:
    return "".join(text.split()).lower()  # OCR sometimes drops the space between two words


def find(api: httpx.Client, query: str, document_id: str) -> list[dict[str, object]]:
    hits = api.post("/v1/search", json={"query": query, "top_k": 5}).json()["hits"]
    return [hit for hit in hits if hit["document_id"] == document_id]


def test_a_scanned_pdf_becomes_searchable_with_page_numbers(api: httpx.Client) -> None:
    # Page 1 blank (OCR finds nothing there), the facts on page 2: their chunks must say page 2.
    job = ingest(api, "harbour-scan.pdf", scanned_pdf([[], FACTS[0] + FACTS[1]]))
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    assert isinstance(result, dict)
    assert result["pages"] == 2 and result["ocr"] == {"pages": 2, "skipped": []}
    document_id = str(result["document_id"])
    hits = find(api, "Who built the lighthouse of Vellmar Point?", document_id)
    assert any("brankov" in squeezed(str(h["text"])) and h["page"] == 2 for h in hits), hits
    hits = find(api, "How many kinds of pear grow in the Quillon orchard?", document_id)
    assert any("oberlund" in squeezed(str(h["text"])) and h["page"] == 2 for h in hits), hits


def test_a_png_upload_is_read_by_ocr(api: httpx.Client) -> None:
    job = ingest(api, "glassworks.png", png(FACTS[2]))
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    assert isinstance(result, dict) and result["ocr"] == {"pages": 1, "skipped": []}
    document = api.get(f"/v1/documents/{result['document_id']}").json()
    assert document["content_type"] == "image/png"
    hits = find(api, "Where does the Zephyrine glassworks ship its bottles?", str(result["document_id"]))
    assert any("castellane" in squeezed(str(h["text"])) for h in hits), hits


def test_pages_over_the_ocr_cap_are_skipped_with_a_note_and_the_job_succeeds(api: httpx.Client) -> None:
    # Not the same bytes as the 2-page scan (a new document), three pages with the cap at two.
    job = ingest(api, "three-page-scan.pdf", scanned_pdf(FACTS, dpi=144))
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    assert isinstance(result, dict) and result["pages"] == 3
    ocr = result["ocr"]
    assert isinstance(ocr, dict) and ocr["pages"] == 2
    [note] = ocr["skipped"]
    assert note["page"] == 3 and note["last_page"] == 3 and "cap" in note["reason"]
