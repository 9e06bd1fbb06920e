"""What a job's ending counts as usage, and the date range ``GET /v1/usage`` reads (no services needed)."""

from __future__ import annotations

from datetime import date

import pytest

from protostar.api.routes.usage import date_range
from protostar.errors import ValidationFailed
from protostar.jobs.usage import Figures, figures


def test_an_ingest_counts_its_pages_chunks_and_embedded_tokens() -> None:
    result = {"chunks": 12, "pages": 3, "embedding_tokens": 900, "embedding_model": "m"}
    assert figures("ingest", "succeeded", result) == Figures(succeeded=1, pages=3, chunks=12, embedding_tokens=900)
    assert figures("ingest", "succeeded", {"chunks": 2, "pages": None}) == Figures(succeeded=1, chunks=2)


def test_chat_and_summaries_count_the_llm_tokens_they_report() -> None:
    chat = {"usage": {"prompt_tokens": 300, "completion_tokens": 40, "embedding_tokens": 9, "summary_version": 2}}
    assert figures("chat", "succeeded", chat) == Figures(
        succeeded=1, prompt_tokens=300, completion_tokens=40, embedding_tokens=9
    )
    summary = {"chunks": 5, "usage": {"prompt_tokens": 10, "completion_tokens": 4}}  # its chunks were not ingested
    assert figures("summary_document", "succeeded", summary) == Figures(
        succeeded=1, prompt_tokens=10, completion_tokens=4
    )


def test_a_failed_or_cancelled_job_counts_as_a_job_only() -> None:
    assert figures("ingest", "failed", None) == Figures(failed=1)
    assert figures("chat", "cancelled", None) == Figures(cancelled=1)
    assert figures("probe", "succeeded", {"steps": 3}) == Figures(succeeded=1)
    assert figures("ingest", "succeeded", {"pages": "3", "chunks": True}) == Figures(succeeded=1)  # not numbers


def test_a_retry_takes_back_exactly_what_was_counted() -> None:
    counted = figures("ingest", "succeeded", {"chunks": 4, "pages": 1, "embedding_tokens": 50})
    back = counted.negated().values()
    assert all(v == -counted.values()[k] for k, v in back.items())


def test_the_range_defaults_to_the_last_30_days_and_is_at_most_366() -> None:
    today = date(2026, 11, 29)
    assert date_range(None, None, today=today) == (date(2026, 10, 31), today)
    assert date_range(date(2026, 11, 1), None, today=today) == (date(2026, 11, 1), today)
    assert date_range(None, date(2026, 1, 31), today=today) == (date(2026, 1, 2), date(2026, 1, 31))
    assert date_range(date(2025, 1, 1), date(2026, 1, 1), today=today) == (date(2025, 1, 1), date(2026, 1, 1))
    assert date_range(None, date(1, 1, 2), today=today) == (date.min, date(1, 1, 2))  # no overflow
    with pytest.raises(ValidationFailed):
        date_range(date(2025, 1, 1), date(2026, 1, 2), today=today)
    with pytest.raises(ValidationFailed):
        date_range(date(2026, 2, 1), date(2026, 1, 1), today=today)
