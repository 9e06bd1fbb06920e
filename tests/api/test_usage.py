"""Usage on the live stack: ``GET /v1/usage`` for a fresh tenant equals what is counted independently from its
jobs, documents, chunks and messages (a failed job counts as failed, a retried one once, by its latest ending),
no other tenant sees any of it, and ``/metrics`` carries the same figures labelled by tenant (capped)."""

from __future__ import annotations

import importlib.util
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Connection, Engine, text

from protostar.api.metrics import OTHER_TENANTS, UsageCollector
from protostar.embeddings.tokens import approx_tokens
from protostar.jobs import usage
from tests.api.test_auth import create_key
from tests.api.test_jobs import submit, wait_status
from tests.conftest import Live
from tests.ingest.test_documents_api import upload

pytestmark = pytest.mark.timeout(900)

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
QUESTION = "Where is the Vrellish kite parade held?"
QUERY = "kite parade harbour"


def _tenant_id(conn: Connection, name: str) -> uuid.UUID:
    return conn.execute(text("SELECT id FROM tenants WHERE name = :n"), {"n": name}).scalar_one()  # type: ignore[no-any-return]


def independent(conn: Connection, tenant_id: uuid.UUID) -> dict[str, Any]:
    """The tenant's usage counted straight from its rows, not from ``usage_daily``."""
    t = {"t": tenant_id}
    jobs: dict[str, dict[str, int]] = {}
    for kind, status, n in conn.execute(
        text(
            "SELECT kind, status, count(*) FROM jobs WHERE tenant_id = :t"
            " AND status IN ('succeeded', 'failed', 'cancelled') GROUP BY kind, status"
        ),
        t,
    ):
        jobs.setdefault(kind, {"succeeded": 0, "failed": 0, "cancelled": 0})[status] = n
    pages, chunks, size, documents = conn.execute(
        text(
            "SELECT coalesce(sum(page_count), 0), coalesce(sum(chunk_count), 0), coalesce(sum(size), 0), count(*)"
            " FROM documents WHERE tenant_id = :t"
        ),
        t,
    ).one()
    chunk_rows, chunk_tokens = conn.execute(
        text("SELECT count(*), coalesce(sum(token_count), 0) FROM chunks WHERE tenant_id = :t"), t
    ).one()
    chat_prompt, chat_completion = conn.execute(
        text(
            "SELECT coalesce(sum((usage->>'prompt_tokens')::int), 0),"
            " coalesce(sum((usage->>'completion_tokens')::int), 0)"
            " FROM messages WHERE tenant_id = :t AND role = 'assistant'"
        ),
        t,
    ).one()
    summary_prompt, summary_completion = conn.execute(
        text(
            "SELECT coalesce(sum((result->'usage'->>'prompt_tokens')::int), 0),"
            " coalesce(sum((result->'usage'->>'completion_tokens')::int), 0)"
            " FROM jobs WHERE tenant_id = :t AND kind LIKE 'summary%' AND status = 'succeeded'"
        ),
        t,
    ).one()
    assert chunk_rows == chunks  # the documents' counts are their chunks'
    return {
        "jobs": jobs,
        "pages": pages,
        "chunks": chunks,
        "chunk_tokens": chunk_tokens,
        "prompt_tokens": chat_prompt + summary_prompt,
        "completion_tokens": chat_completion + summary_completion,
        "storage": {"documents": documents, "bytes": size},
    }


def test_usage_matches_what_the_jobs_and_documents_say(live: Live, engine: Engine) -> None:
    name = f"usage-{uuid.uuid4().hex[:8]}"
    pdf = (CORPUS / "layout-parser-paper-fast.pdf").read_bytes()
    note = (
        "The Vrellish kite parade is held on the harbour wall of Ostmarrow every spring. " * 6 + uuid.uuid4().hex
    ).encode()
    with live.client(create_key(name, admin=True)) as api:
        first = upload(api, "paper.pdf", pdf)
        assert first.status_code == 202, first.text
        wait_status(api, first.json()["job_id"], "succeeded", timeout=300)

        # The tenant's two ingest turns held by probes: the next upload waits unsent, so its cancel is certain.
        holders = [submit(api, queue="ingest", steps=600, sleep=0.05) for _ in range(2)]
        second = upload(api, "note.txt", note)
        assert second.status_code == 202, second.text
        ingest_id, document_id = second.json()["job_id"], second.json()["document_id"]
        assert api.post(f"/v1/jobs/{ingest_id}/cancel").json()["status"] == "cancelled"
        for holder in holders:
            api.post(f"/v1/jobs/{holder}/cancel")
            wait_status(api, holder, "cancelled")
        assert api.post(f"/v1/jobs/{ingest_id}/retry").status_code == 202  # cancelled, then ingested once
        wait_status(api, ingest_id, "succeeded", timeout=300)

        failed = submit(api, queue="chat", steps=1, fail="input")
        wait_status(api, failed, "failed")
        assert api.post(f"/v1/jobs/{failed}/retry").status_code == 202
        wait_status(api, failed, "failed")  # failed twice, one job: counted once

        session_id = api.post("/v1/sessions", json={}).json()["session_id"]
        asked = api.post(f"/v1/sessions/{session_id}/messages", json={"content": QUESTION})
        assert asked.status_code == 202, asked.text
        wait_status(api, asked.json()["job_id"], "succeeded", timeout=300)
        summarized = api.post(f"/v1/documents/{document_id}/summarize")
        assert summarized.status_code == 202, summarized.text
        wait_status(api, summarized.json()["job_id"], "succeeded", timeout=300)
        assert api.post("/v1/search", json={"query": QUERY, "top_k": 3}).status_code == 200

        got = api.get("/v1/usage")
        assert got.status_code == 200, got.text
        body = got.json()

    with engine.connect() as conn:
        tenant_id = _tenant_id(conn, name)
        want = independent(conn, tenant_id)
    today = datetime.now(UTC).date()
    assert body["to"] == today.isoformat() and body["from"] == (today - timedelta(days=29)).isoformat()
    totals = body["totals"]
    assert totals["jobs"] == want["jobs"]
    assert want["jobs"]["ingest"] == {"succeeded": 2, "failed": 0, "cancelled": 0}  # the cancel was taken back
    assert want["jobs"]["probe"] == {"succeeded": 0, "failed": 1, "cancelled": 2}
    assert want["jobs"]["chat"]["succeeded"] == 1 and want["jobs"]["summary_document"]["succeeded"] == 1
    assert totals["pages"] == want["pages"] > 0  # the PDF's pages; the note has none
    assert totals["chunks"] == want["chunks"] > 0
    assert totals["embedding_tokens"] == want["chunk_tokens"] + approx_tokens(QUESTION) + approx_tokens(QUERY)
    assert totals["prompt_tokens"] == want["prompt_tokens"] > 0
    assert totals["completion_tokens"] == want["completion_tokens"] > 0
    assert totals["searches"] == 1
    assert body["storage"] == want["storage"] == {"documents": 2, "bytes": len(pdf) + len(note)}
    per_day: Counter[str] = Counter()
    for day in body["days"]:
        for kind, outcomes in day["jobs"].items():
            per_day.update({f"{kind}/{o}": n for o, n in outcomes.items()})
    assert +per_day == +Counter({f"{k}/{o}": n for k, v in want["jobs"].items() for o, n in v.items()})

    with live.client(create_key(f"usage-other-{uuid.uuid4().hex[:8]}")) as other:
        theirs = other.get("/v1/usage").json()
    assert theirs["days"] == [] and theirs["storage"] == {"documents": 0, "bytes": 0}
    assert theirs["totals"]["jobs"] == {} and theirs["totals"]["embedding_tokens"] == 0

    with live.client() as api:
        scraped = api.get("/metrics")
    assert scraped.status_code == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scraped.text)
        for s in family.samples
    }
    mine = ("tenant", name)
    assert samples[("protostar_usage_jobs_total", (("kind", "ingest"), ("outcome", "succeeded"), mine))] == 2
    assert samples[("protostar_usage_jobs_total", (("kind", "probe"), ("outcome", "failed"), mine))] == 1
    assert samples[("protostar_usage_pages_total", (mine,))] == want["pages"]
    assert samples[("protostar_usage_chunks_total", (mine,))] == want["chunks"]
    assert samples[("protostar_usage_llm_tokens_total", (mine, ("type", "completion")))] == want["completion_tokens"]
    assert samples[("protostar_usage_storage_bytes", (mine,))] == len(pdf) + len(note)


@pytest.mark.parametrize(
    "params",
    [{"from": "2026-02-01", "to": "2026-01-01"}, {"from": "2025-01-01", "to": "2026-01-02"}, {"from": "someday"}],
)
def test_a_bad_or_too_long_range_is_422(api: httpx.Client, params: dict[str, str]) -> None:
    response = api.get("/v1/usage", params=params)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_failed"


def test_a_year_is_a_valid_range(api: httpx.Client) -> None:
    response = api.get("/v1/usage", params={"from": "2025-01-01", "to": "2026-01-01"})  # 366 days
    assert response.status_code == 200, response.text
    assert response.json()["from"] == "2025-01-01" and response.json()["to"] == "2026-01-01"


def test_tenants_past_the_cap_are_added_up_as_other(live: Live, engine: Engine) -> None:
    with engine.connect() as conn:
        everyone, _ = usage.totals_by_tenant(conn, cap=1_000_000, other=OTHER_TENANTS)
        capped, stored = usage.totals_by_tenant(conn, cap=0, other=OTHER_TENANTS)
    assert {row.tenant for row in capped} <= {OTHER_TENANTS} and set(stored) <= {OTHER_TENANTS}
    for column in usage.COLUMNS:
        assert sum(getattr(r.counts, column) for r in capped) == sum(getattr(r.counts, column) for r in everyone)
    families = list(UsageCollector(engine, cap=0).collect())
    labels = {s.labels["tenant"] for family in families for s in family.samples}
    assert labels <= {OTHER_TENANTS}


def test_the_usage_of_each_tenant_and_day_equals_its_jobs(live: Live, engine: Engine) -> None:
    """In one snapshot, for this module's tenants (other tests write job rows by hand): the counts by tenant,
    UTC day, kind and outcome, and the ingests' pages and chunks, summed from the jobs table, are
    ``usage_daily``'s."""
    with live.client(create_key(f"usage-{uuid.uuid4().hex[:8]}", admin=True)) as api:
        wait_status(api, submit(api, queue="summary", steps=1), "succeeded")
        wait_status(api, submit(api, queue="summary", steps=1, fail="input"), "failed")
    mine = "tenant_id IN (SELECT id FROM tenants WHERE name LIKE 'usage-%')"
    from_jobs = text(
        "SELECT tenant_id, (finished_at AT TIME ZONE 'UTC')::date, kind,"
        " count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status = 'failed'),"
        " count(*) FILTER (WHERE status = 'cancelled'),"
        " coalesce(sum((result->>'pages')::int) FILTER (WHERE kind = 'ingest'), 0),"
        " coalesce(sum((result->>'chunks')::int) FILTER (WHERE kind = 'ingest'), 0)"
        f" FROM jobs WHERE {mine} AND status IN ('succeeded', 'failed', 'cancelled') GROUP BY 1, 2, 3"
    )
    from_usage = text(
        "SELECT tenant_id, day, kind, succeeded, failed, cancelled, pages, chunks FROM usage_daily"
        f" WHERE {mine} AND kind <> 'search' AND (succeeded, failed, cancelled) <> (0, 0, 0)"
    )
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn, conn.begin():
        jobs = {tuple(r[:3]): tuple(r[3:]) for r in conn.execute(from_jobs)}
        counted = {tuple(r[:3]): tuple(r[3:]) for r in conn.execute(from_usage)}
    assert jobs and jobs == counted


def test_the_migrations_backfill_counts_as_the_live_path_does(live: Live, engine: Engine) -> None:
    """Migration 0012 counts the jobs that ended before it from their rows: for this module's tenants, its query
    gives what ``usage_daily`` holds (embedding tokens aside: chat results before it had none)."""
    with live.client(create_key(f"usage-{uuid.uuid4().hex[:8]}", admin=True)) as api:
        wait_status(api, submit(api, queue="chat", steps=1), "succeeded")
    path = Path(__file__).resolve().parents[2] / "protostar/db/migrations/versions/0012_usage_daily.py"
    spec = importlib.util.spec_from_file_location("usage_migration", path)
    assert spec and spec.loader
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    backfill = migration.BACKFILL[migration.BACKFILL.index("SELECT") :]
    compared = "tenant_id, day, kind, succeeded, failed, cancelled, pages, chunks, prompt_tokens, completion_tokens"
    mine = "tenant_id IN (SELECT id FROM tenants WHERE name LIKE 'usage-%')"
    columns = "tenant_id, day, kind, succeeded, failed, cancelled, pages, chunks, embedding_tokens, prompt_tokens,"
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn, conn.begin():
        rebuilt = {
            tuple(r)
            for r in conn.execute(
                text(f"SELECT {compared} FROM ({backfill}) AS b({columns} completion_tokens) WHERE {mine}")
            )
        }
        counted = {
            tuple(r)
            for r in conn.execute(
                text(
                    f"SELECT {compared} FROM usage_daily WHERE {mine} AND kind <> 'search'"
                    " AND (succeeded, failed, cancelled) <> (0, 0, 0)"
                )
            )
        }
    assert rebuilt and rebuilt == counted
