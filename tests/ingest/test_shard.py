"""A large PDF ingested in parts by both ingest children (protostar.ingest.shard), on the live system. The test
settings shard PDFs over 20 pages in parts of 8 pages, with a 3 s lease on a part."""

from __future__ import annotations

import os
import signal
import tempfile
import uuid
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import Engine, text

from protostar.ingest import parts
from protostar.ingest.chunk import chunk
from protostar.ingest.parse import parse
from tests.api.test_jobs import wait_status
from tests.conftest import Live, wait_for
from tests.ingest.test_documents_api import upload
from tests.sse import read_events

pytestmark = pytest.mark.timeout(600)

WORDS = [
    "harbour",
    "ledger",
    "audit",
    "committee",
    "tide",
    "lantern",
    "orchard",
    "granite",
    "beacon",
    "meadow",
    "quarry",
    "ferry",
    "archive",
    "signal",
    "copper",
    "willow",
    "compass",
    "garnet",
    "falcon",
    "timber",
]


def make_pdf(pages: int, *, tag: str) -> bytes:
    """A text PDF of ``pages`` pages, each a heading and a few paragraphs of distinct sentences, built by hand."""
    objects: list[bytes] = []
    page_ids = [4 + 2 * i for i in range(pages)]
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    kids = " ".join(f"{i} 0 R" for i in page_ids)
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for p in range(pages):
        lines = [f"BT /F1 18 Tf 72 740 Td (Chapter {p + 1} of the {tag} report) Tj ET"]
        y = 700
        for s in range(14):
            words = " ".join(WORDS[(p * 7 + s * 3 + k) % len(WORDS)] for k in range(9))
            sentence = f"Page {p + 1} line {s + 1} notes the {words} figures."
            lines.append(f"BT /F1 10 Tf 72 {y} Td ({sentence}) Tj ET")
            y -= 16 if s % 5 != 4 else 30
        stream = "\n".join(lines).encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {page_ids[p] + 1} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def stored_chunks(engine: Engine, document_id: str) -> list[tuple[int, str, int | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT ordinal, text, page FROM chunks WHERE document_id = :d ORDER BY ordinal"), {"d": document_id}
        ).all()
    return [(r.ordinal, r.text, r.page) for r in rows]


def parts_of(engine: Engine, job_id: str) -> list[tuple[str, int, bool, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT phase, part, done, holder FROM ingest_parts WHERE job_id = :j ORDER BY phase, part"),
            {"j": job_id},
        ).all()
    return [(r.phase, r.part, r.done, r.holder) for r in rows]


def test_a_sharded_ingest_gives_the_chunks_of_a_single_pass(live: Live, api: httpx.Client, engine: Engine) -> None:
    data = make_pdf(44, tag=uuid.uuid4().hex[:8])
    response = upload(api, "sharded.pdf", data)
    assert response.status_code == 202, response.text
    job_id, document_id = response.json()["job_id"], response.json()["document_id"]
    job = wait_status(api, job_id, "succeeded", "failed", timeout=300)
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["pages"] == 44  # type: ignore[index]

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "same.pdf"
        path.write_bytes(data)
        single = chunk(
            parse(path, "pdf", max_pages=live.settings.max_pages).elements,
            max_tokens=live.settings.chunk_tokens,
            overlap=live.settings.chunk_overlap,
        )
    assert stored_chunks(engine, document_id) == [(c.ordinal, c.text, c.page) for c in single]
    assert parts_of(engine, job_id) == []  # deleted with the store

    events = read_events(api, job_id)
    progress = [e.data for e in events if e.event == "progress"]
    parse_steps = [p for p in progress if p["stage"] == "parse"]
    assert parse_steps and parse_steps[-1] == {"stage": "parse", "done": 44, "total": 44}
    embed_steps = [p for p in progress if p["stage"] == "embed"]
    assert embed_steps[-1] == {"stage": "embed", "done": len(single), "total": len(single)}
    assert all(p["done"] <= p["total"] for p in parse_steps + embed_steps)


def _ingest_children(live: Live) -> list[int]:
    pid = live.supervisor.pid("worker-ingest")
    assert pid is not None
    return [c.pid for c in psutil.Process(pid).children() if c.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize("victim", ["helper", "coordinator"])
def test_sigkill_of_an_ingest_child_during_a_sharded_ingest_leaves_one_set_of_chunks(
    live: Live, api: httpx.Client, engine: Engine, victim: str
) -> None:
    response = upload(api, f"kill-{victim}.pdf", make_pdf(60, tag=uuid.uuid4().hex[:8]))
    job_id, document_id = response.json()["job_id"], response.json()["document_id"]

    def coordinator() -> int | None:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT worker FROM jobs WHERE id = :j"), {"j": job_id}).first()
        held = [p for p in parts_of(engine, job_id) if p[3] is not None and not p[2]]
        if row is None or not row.worker or not held:
            return None
        return int(row.worker.rsplit(":", 1)[1])

    lead = wait_for(coordinator, timeout=180, what="a part of the sharded ingest to be claimed")
    if victim == "coordinator":
        target = lead
    else:
        others = wait_for(lambda: [p for p in _ingest_children(live) if p != lead], timeout=30, what="the other child")
        target = others[0]
    os.kill(target, signal.SIGKILL)

    job = wait_status(api, job_id, "succeeded", "failed", timeout=400)
    assert job["status"] == "succeeded", job["error"]
    rows = stored_chunks(engine, document_id)
    assert [r[0] for r in rows] == list(range(len(rows))) == list(range(job["result"]["chunks"]))  # type: ignore[index]
    assert len({r[1] for r in rows}) == len(rows)  # every chunk once
    assert [e.event for e in read_events(api, job_id)].count("done") == 1
    wait_for(lambda: not parts_of(engine, job_id), timeout=10, what="the parts to be deleted")
    # the killed child is replaced: both children serve again
    wait_for(lambda: len(_ingest_children(live)) == live.settings.ingest_concurrency, timeout=60, what="children")


@pytest.mark.parametrize("stop", ["cancel", "delete"])
def test_cancel_or_delete_during_a_sharded_ingest_stores_no_chunks(
    api: httpx.Client, engine: Engine, stop: str
) -> None:
    response = upload(api, f"{stop}-me.pdf", make_pdf(60, tag=uuid.uuid4().hex[:8]))
    job_id, document_id = response.json()["job_id"], response.json()["document_id"]
    wait_for(lambda: parts_of(engine, job_id), timeout=180, what="the parts to be planned")
    if stop == "cancel":
        assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    else:
        assert api.delete(f"/v1/documents/{document_id}").status_code == 204
    job = wait_status(api, job_id, "cancelled", "succeeded", "failed", timeout=120)
    assert job["status"] == "cancelled"
    assert stored_chunks(engine, document_id) == []

    # No part is claimed after the cancel: every lease runs out and none is taken again.
    def settled() -> bool:
        with engine.connect() as conn:
            return not conn.execute(
                text("SELECT 1 FROM ingest_parts WHERE job_id = :j AND lease_until > now()"), {"j": job_id}
            ).first()

    wait_for(settled, timeout=30, what="the part leases to run out")
    assert parts.sweep(engine) >= 1  # beat's reconcile deletes an ended job's parts
    assert parts_of(engine, job_id) == []


def test_a_failed_part_fails_the_document_with_its_reason(api: httpx.Client, engine: Engine) -> None:
    """A part that cannot be parsed records its reason (here written as ``shard._do`` writes it, on the last
    parse part, before any child has done it); the coordinator fails the job with it."""
    response = upload(api, "bad-part.pdf", make_pdf(60, tag=uuid.uuid4().hex[:8]))
    job_id, document_id = response.json()["job_id"], response.json()["document_id"]
    reason = "pages 57-60: the PDF could not be parsed (PDFSyntaxError)"

    def fail_last_part() -> bool:
        with engine.begin() as conn:
            return bool(
                conn.execute(
                    text(
                        "UPDATE ingest_parts SET done = true, error_code = 'input_rejected', error_message = :m "
                        "WHERE job_id = :j AND phase = 'parse' AND part = 7 AND NOT done"
                    ),
                    {"j": job_id, "m": reason},
                ).rowcount
            )

    wait_for(fail_last_part, timeout=180, what="the last parse part to be planned")
    job = wait_status(api, job_id, "failed", "succeeded", timeout=120)
    assert job["status"] == "failed"
    assert job["error"] == {"code": "input_rejected", "message": reason}
    assert stored_chunks(engine, document_id) == []
    assert parts_of(engine, job_id) == []


def test_a_long_text_is_embedded_in_parts_with_the_chunks_of_a_single_pass(
    live: Live, api: httpx.Client, engine: Engine
) -> None:
    tag = uuid.uuid4().hex[:8]
    body = "\n\n".join(
        f"Section {i} {tag}. "
        + " ".join(f"Line {j} of section {i} mentions the {WORDS[(i + j) % 20]}." for j in range(12))
        for i in range(240)
    )
    response = upload(api, "long-notes.txt", body.encode())
    job_id, document_id = response.json()["job_id"], response.json()["document_id"]
    job = wait_status(api, job_id, "succeeded", "failed", timeout=300)
    assert job["status"] == "succeeded", job["error"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "same.txt"
        path.write_bytes(body.encode())
        single = chunk(
            parse(path, "txt", max_pages=live.settings.max_pages).elements,
            max_tokens=live.settings.chunk_tokens,
            overlap=live.settings.chunk_overlap,
        )
    assert len(single) > live.settings.ingest_shard_chunks  # embedded in parts
    assert stored_chunks(engine, document_id) == [(c.ordinal, c.text, c.page) for c in single]
    assert parts_of(engine, job_id) == []
    embed_steps = [e.data for e in read_events(api, job_id) if e.event == "progress" and e.data["stage"] == "embed"]
    assert embed_steps[-1] == {"stage": "embed", "done": len(single), "total": len(single)}
