"""Sessions a caller can find and remove (live stack): ``GET /v1/sessions`` (newest first, cursor pages, the
tenant's own), ``GET /v1/sessions/{id}/messages`` (latest first, cursor pages back) and ``DELETE
/v1/sessions/{id}`` (its answer in flight is cancelled; its messages and summaries are gone); the client's
methods for them."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from protostar.client import Client
from protostar.db.models import ChatSession, Message
from tests.api.test_auth import create_key
from tests.api.test_jobs import wait_status
from tests.chat.test_chat_api import ask, new_session
from tests.conftest import Live
from tests.sse import read_events


def _pages(api: httpx.Client, path: str, limit: int) -> list[list[dict[str, object]]]:
    pages, cursor = [], None
    while True:
        response = api.get(path, params={"limit": limit, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        pages.append(response.json()["items"])
        cursor = response.json()["next_cursor"]
        if not cursor:
            return pages


def test_sessions_are_listed_newest_first_by_pages_and_only_the_tenants_own(live: Live) -> None:
    with live.client(create_key(f"sessions-{uuid.uuid4().hex[:8]}")) as api:
        ids = [new_session(api) for _ in range(5)]
        pages = _pages(api, "/v1/sessions", 2)
        assert [len(p) for p in pages] == [2, 2, 1]
        listed = [str(s["id"]) for p in pages for s in p]
        assert listed == ids[::-1]  # newest first, none repeated or skipped
        assert set(pages[0][0]) == {"id", "title", "metadata", "created_at", "updated_at"}
        with live.client(create_key(f"sessions-other-{uuid.uuid4().hex[:8]}")) as other:
            assert other.get("/v1/sessions").json()["items"] == []
            assert other.get(f"/v1/sessions/{ids[0]}/messages").status_code == 404
            assert other.delete(f"/v1/sessions/{ids[0]}").status_code == 404
        assert api.get(f"/v1/sessions/{ids[0]}").status_code == 200  # the other tenant's delete did nothing
        assert api.get("/v1/sessions", params={"cursor": "garbage"}).status_code == 422


def test_messages_come_latest_first_and_page_back_to_the_first(api: httpx.Client, engine: Engine) -> None:
    session_id = new_session(api)
    with Session(engine) as db:
        chat = db.get(ChatSession, uuid.UUID(session_id))
        assert chat is not None
        for i in range(5):
            db.add(Message(session_id=chat.id, tenant_id=chat.tenant_id, role="user", content=f"message {i}"))
            db.flush()
        db.commit()
    pages = _pages(api, f"/v1/sessions/{session_id}/messages", 2)
    assert [[m["content"] for m in p] for p in pages] == [
        ["message 4", "message 3"],
        ["message 2", "message 1"],
        ["message 0"],
    ]
    whole = api.get(f"/v1/sessions/{session_id}").json()["messages"]  # GET /v1/sessions/{id} is unchanged
    assert [m["content"] for m in whole] == [f"message {i}" for i in range(5)]
    assert api.get(f"/v1/sessions/{session_id}/messages", params={"limit": 0}).status_code == 422
    assert api.get(f"/v1/sessions/{session_id}/messages", params={"cursor": "garbage"}).status_code == 422
    assert api.get(f"/v1/sessions/{uuid.uuid4()}/messages").status_code == 404


def test_deleting_a_session_cancels_its_answer_and_removes_its_messages(api: httpx.Client, engine: Engine) -> None:
    session_id = new_session(api)
    done = ask(api, session_id, "Hello.")
    wait_status(api, done["job_id"], "succeeded", timeout=120)
    asked = ask(api, session_id, "Write a very long story about a lighthouse keeper, with many chapters.")
    seen = list(read_events(api, asked["job_id"], stop_after=20, timeout=120))
    assert seen
    assert api.delete(f"/v1/sessions/{session_id}").status_code == 204
    job = wait_status(api, asked["job_id"], "cancelled", "succeeded", timeout=60)
    # Cancelled mid-answer (or, on a fast machine, already answered): either way nothing of the session is left.
    assert job["status"] in ("cancelled", "succeeded")
    assert api.get(f"/v1/sessions/{session_id}").status_code == 404
    assert api.get(f"/v1/sessions/{session_id}/messages").status_code == 404
    assert api.delete(f"/v1/sessions/{session_id}").status_code == 404
    with engine.connect() as conn:
        for table in ("messages", "summaries"):
            left = conn.execute(text(f"SELECT count(*) FROM {table} WHERE session_id = :s"), {"s": session_id})
            assert left.scalar_one() == 0, table
    events = list(read_events(api, asked["job_id"], timeout=30))
    assert events[-1].event == "done"


def test_the_client_lists_pages_and_deletes_sessions(live: Live) -> None:
    with Client(live.api_url, create_key(f"sessions-client-{uuid.uuid4().hex[:8]}")) as client:
        first, second = client.sessions.create(title="one"), client.sessions.create(title="two")
        page = client.sessions.list(limit=1)
        assert [s.id for s in page.items] == [second] and page.next_cursor
        assert [s.id for s in client.sessions.list(cursor=page.next_cursor).items] == [first]
        assert client.sessions.messages(first).items == []
        client.sessions.delete(first)
        assert [s.id for s in client.sessions.list().items] == [second]


def test_deleting_a_session_cancels_its_jobs_still_waiting_for_their_turn_and_frees_the_turn(live: Live) -> None:
    """A tenant has ``PROTOSTAR_TENANT_INFLIGHT_CHAT`` (4 here) answers in flight: a fifth waits its turn,
    unsent. Deleting its session ends it ``cancelled`` without ever running; deleting the session of the four
    that run cancels them too, and the turn they held goes to the tenant's next job waiting (another session's)."""
    with live.client(create_key(f"sessions-turns-{uuid.uuid4().hex[:8]}")) as api:
        busy = new_session(api)
        story = "Write a very long story about a lighthouse keeper, with many chapters."
        running = [ask(api, busy, f"{story} ({i})")["job_id"] for i in range(live.settings.tenant_inflight_chat)]
        waiting_session = new_session(api)
        waiting = ask(api, waiting_session, story)["job_id"]
        later_session = new_session(api)
        later = ask(api, later_session, "Hello.")["job_id"]
        assert api.get(f"/v1/jobs/{waiting}").json()["progress"]["stage"] == "waiting_turn"

        assert api.delete(f"/v1/sessions/{waiting_session}").status_code == 204
        job = wait_status(api, waiting, "cancelled", timeout=30)
        assert job["started_at"] is None  # it never ran
        assert api.delete(f"/v1/sessions/{busy}").status_code == 204
        for job_id in running:
            assert wait_status(api, job_id, "cancelled", "succeeded", timeout=60)["status"] in (
                "cancelled",
                "succeeded",
            )
        # The turns the deleted sessions held came free: the other session's question is answered.
        assert wait_status(api, later, "succeeded", timeout=180)["status"] == "succeeded"
        assert [s["id"] for s in api.get("/v1/sessions").json()["items"]] == [later_session]
