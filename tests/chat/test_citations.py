"""Citations a reader can follow: a chat answer's sources carry the file name, the page (slide, sheet), the
chunk's ordinal and text and whether the answer cites them; a ``sources`` event arrives before the first token
(live stack, a tenant of its own so that its two documents are all retrieval can find)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from protostar.chat.attribution import attribute, words
from protostar.chat.pipeline import cited_numbers, page_kind
from protostar.client.models import Event, Reset
from protostar.client.sse import ChatState
from tests.api.test_auth import create_key
from tests.api.test_jobs import wait_status
from tests.chat.test_chat_api import ask, new_session
from tests.conftest import Live
from tests.ingest.test_documents_api import upload
from tests.sse import read_events

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
FACT = "The Wexmoor tide clock was built by the clockmaker Odile Pask in the harbour town of Wexmoor."


def test_citations_are_read_from_the_answer() -> None:
    assert cited_numbers("As [1] says, and [3][4]; see also [2, 5] and [ 6 ].") == {1, 2, 3, 4, 5}
    assert cited_numbers("No sources here [a] [].") == set()


def test_an_answer_citing_nothing_is_attributed_to_the_source_holding_what_it_adds() -> None:
    sources = [
        "The Wexmoor tide clock stands on the harbour wall of Wexmoor.",  # the question's words, not the fact
        "Odile Pask, a clockmaker, built the tide clock in 1887.",
        "Wexmoor has a long pier and a lighthouse.",
    ]
    question = "Who built the Wexmoor tide clock?"
    assert attribute("The Wexmoor tide clock was built by Odile Pask in 1887.", question, sources) == 2
    # a figure weighs more than a word: revenues of 1,234,567 are in the third source, "report" in the first
    money = ["Our annual report covers 2021.", "Nothing here.", "Gross revenues were $1,234,567 in the year."]
    assert attribute("The report says gross revenues were $1234567.", "What were the revenues?", money) == 3
    # nothing the answer adds is in a source (a refusal, a guess): no source is cited
    assert attribute("The sources do not say who built it.", question, sources) is None
    assert attribute("It was built by Jan Smit.", question, sources) is None
    assert attribute("Odile Pask built it.", question, []) is None
    # on a tie, the higher-ranked source
    assert attribute("Odile Pask.", "Who?", ["Odile Pask wrote it.", "Odile Pask read it."]) == 1
    assert words("Gross revenues of 1,234,567 and the clocks.") == {"gross", "revenue", "1234567", "clock"}


def test_pages_are_named_by_the_kind_of_file() -> None:
    assert page_kind("application/pdf") == "page"
    assert page_kind("application/vnd.openxmlformats-officedocument.presentationml.presentation") == "slide"
    assert page_kind("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet") == "sheet"


def test_the_client_keeps_the_sources_and_drops_them_when_the_answer_starts_over() -> None:
    state = ChatState("job")
    state.feed(Event("1-0", "status", {"status": "running", "attempt": 1}))
    source = {"n": 1, "document_id": str(uuid.uuid4()), "chunk_id": 7, "score": 0.5, "filename": "a.pdf", "page": 2}
    state.feed(Event("1-1", "sources", {"sources": [source]}))
    assert [(s.n, s.filename, s.page, s.cited) for s in state.sources] == [(1, "a.pdf", 2, None)]
    assert isinstance(state.feed(Event("1-2", "status", {"status": "running", "attempt": 2})), Reset)
    assert state.sources == []


@pytest.mark.timeout(600)
def test_sources_name_file_page_and_chunk_arrive_before_the_first_token_and_mark_what_was_cited(
    live: Live, engine: Engine
) -> None:
    with live.client(create_key(f"citations-{uuid.uuid4().hex[:8]}")) as api:
        slides = upload(api, CORPUS / "fake-power-point.pptx")
        note = upload(api, "wexmoor.txt", (FACT + "\n\nWexmoor has a long pier and a lighthouse. " * 3).encode())
        for uploaded in (slides, note):
            assert uploaded.status_code == 202, uploaded.text
            wait_status(api, uploaded.json()["job_id"], "succeeded", timeout=300)
        session_id = new_session(api)
        accepted = ask(api, session_id, "Who built the Wexmoor tide clock? And how do I add a bullet slide?")
        events = list(read_events(api, accepted["job_id"], timeout=180))
        kinds = [e.event for e in events]
        assert kinds[-1] == "done" and events[-1].data["status"] == "succeeded", events[-3:]
        assert "sources" in kinds and kinds.index("sources") < kinds.index("token")
        early = events[kinds.index("sources")].data["sources"]
        answer = "".join(e.data["text"] for e in events if e.event == "token")

        job = wait_status(api, accepted["job_id"], "succeeded")
        result = job["result"]
        sources = result["sources"]  # type: ignore[index]
        assert [s["n"] for s in sources] == list(range(1, len(sources) + 1))
        assert [{k: v for k, v in s.items() if k != "cited"} for s in sources] == early  # the same, known early
        cited = cited_numbers(answer)
        assert [s["cited"] for s in sources] == [s["n"] in cited for s in sources]

        by_file = {s["filename"]: s for s in sources}
        assert {"fake-power-point.pptx", "wexmoor.txt"} <= set(by_file), by_file.keys()
        slide = by_file["fake-power-point.pptx"]
        assert slide["page"] == 1 and slide["page_kind"] == "slide"
        assert by_file["wexmoor.txt"]["page_kind"] in (None, "page")
        with engine.connect() as conn:
            for source in sources:
                row = conn.execute(
                    text("SELECT ordinal, text, page, document_id::text AS d FROM chunks WHERE id = :i"),
                    {"i": source["chunk_id"]},
                ).one()
                assert (row.ordinal, row.text, row.page, row.d) == (
                    source["ordinal"],
                    source["text"],
                    source["page"],
                    source["document_id"],
                )

        messages = api.get(f"/v1/sessions/{session_id}/messages").json()["items"]
        assert messages[0]["role"] == "assistant" and messages[0]["sources"] == sources
        whole = api.get(f"/v1/sessions/{session_id}").json()["messages"]
        assert whole[-1]["sources"] == sources
