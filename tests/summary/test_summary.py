"""Summaries on the live system and the real local model: the threshold after chat answers, one job in flight
per session, redelivery, chat prompts that use the summary, beat's stale sessions, document summaries, and
tenant isolation."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from protostar.auth import DEFAULT_TENANT, ensure_tenant
from protostar.chat.pipeline import load_context
from protostar.chat.prompt import build
from protostar.constants import JobKind, TaskName
from protostar.db.engine import make_engine
from protostar.errors import Cancelled
from protostar.jobs import repo as jobs_repo
from protostar.jobs.broker import create_celery
from protostar.jobs.context import JobContext
from protostar.jobs.dispatch import Dispatcher
from protostar.jobs.events import EventLog
from protostar.summary import repo as summary_repo
from protostar.summary.pipeline import SessionSummary, save_session_summary
from protostar.summary.submit import after_answer, resummarize
from tests.api.test_auth import create_key
from tests.api.test_jobs import wait_status
from tests.chat.test_chat_api import ask, new_session
from tests.conftest import Live
from tests.ingest.test_documents_api import upload


@pytest.fixture(scope="module")
def api_module(live: Live) -> Iterator[httpx.Client]:
    with live.client() as client:
        yield client


@pytest.fixture(scope="module")
def dispatcher(live: Live, engine: Engine) -> Iterator[Dispatcher]:
    settings = live.settings
    assert settings.redis_url
    client = redis.Redis.from_url(settings.redis_url)
    events = EventLog(client, ttl=settings.events_ttl, maxlen=settings.events_maxlen)
    yield Dispatcher(celery=create_celery(settings, role="api"), engine=engine, events=events, settings=settings)
    client.close()


def tenant_of(engine: Engine, session_id: str) -> uuid.UUID:
    with engine.connect() as conn:
        found = conn.execute(text("SELECT tenant_id FROM sessions WHERE id = :id"), {"id": session_id}).scalar()
    return uuid.UUID(str(found))


def seed(engine: Engine, session_id: str, turns: int, *, age_seconds: float = 0) -> list[int]:
    """``turns`` question/answer pairs written straight to the session (as answered chats leave them); their seqs."""
    tenant = tenant_of(engine, session_id)
    seqs: list[int] = []
    with engine.begin() as conn:
        for n in range(turns):
            question = uuid.uuid4()
            for role, content, reply_to in (
                ("user", f"Question {n}: what is fact number {n}?", None),
                ("assistant", f"Fact number {n} is that the sky over Quillby is colour {n}.", question),
            ):
                seq = conn.execute(
                    text(
                        "INSERT INTO messages (id, session_id, tenant_id, role, content, status, reply_to, created_at) "
                        "VALUES (:id, :sid, :tid, :role, :content, 'complete', :reply_to, "
                        "now() - make_interval(secs => :age)) RETURNING seq"
                    ),
                    {
                        "id": question if role == "user" else uuid.uuid4(),
                        "sid": session_id,
                        "tid": tenant,
                        "role": role,
                        "content": content,
                        "reply_to": reply_to,
                        "age": age_seconds,
                    },
                ).scalar_one()
                seqs.append(int(seq))
    return seqs


def summary_jobs(engine: Engine, session_id: str) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, status FROM jobs WHERE kind = 'summary_session' AND payload->>'session_id' = :sid"),
            {"sid": session_id},
        ).all()
    return [(str(r[0]), r[1]) for r in rows]


def add_summary(engine: Engine, session_id: str, covers_seq: int, content: str, *, before: int = 100) -> None:
    with engine.begin() as conn:
        assert summary_repo.save(
            conn,
            session_id=uuid.UUID(session_id),
            tenant_id=tenant_of(engine, session_id),
            version=1,
            covers_seq=covers_seq,
            content=content,
            tokens_before=before,
            tokens_after=10,
            job_id=uuid.uuid4(),
        )


def test_the_threshold_queues_exactly_one_summary_that_the_session_then_shows(
    api_module: httpx.Client, engine: Engine
) -> None:
    below, at = new_session(api_module), new_session(api_module)
    seed(engine, below, 1)  # + a question and its answer: 4 messages, under 6
    seed(engine, at, 2)  # + a question and its answer: 6 messages
    asked = [ask(api_module, sid, "Which colour is the sky over Quillby?") for sid in (below, at)]
    for accepted in asked:
        wait_status(api_module, accepted["job_id"], "succeeded", timeout=180)
    assert summary_jobs(engine, below) == []
    jobs = summary_jobs(engine, at)
    assert len(jobs) == 1, jobs

    job = wait_status(api_module, jobs[0][0], "succeeded", timeout=180)
    result = job["result"]
    assert isinstance(result, dict) and result["summary"] and result["version"] == 1 and result["written"]
    assert result["messages"] == 6 and result["covers_seq"] > 0
    assert result["tokens_before"] > 0 and result["tokens_after"] > 0  # the tiny model may not compress 6 short turns
    assert api_module.get(f"/v1/sessions/{at}").json()["summary"] == result["summary"]
    assert api_module.get(f"/v1/sessions/{below}").json()["summary"] is None
    assert len(summary_jobs(engine, at)) == 1


def test_concurrent_triggers_queue_one_job_and_the_api_answers_with_it(
    api_module: httpx.Client, engine: Engine, dispatcher: Dispatcher, live: Live
) -> None:
    session_id = new_session(api_module)
    seed(engine, session_id, 4)
    tenant = tenant_of(engine, session_id)
    start = threading.Barrier(8)
    queued: list[object] = []
    wide = make_engine(live.settings, pool_size=8)  # every thread on its own connection, truly at once

    def trigger() -> None:
        with Session(wide, expire_on_commit=False) as session:
            start.wait()
            job = after_answer(
                session, dispatcher=dispatcher, tenant_id=tenant, session_id=uuid.UUID(session_id), every=6
            )
            if job is not None:
                queued.append(job.id)

    threads = [threading.Thread(target=trigger) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    wide.dispose()
    assert len(queued) == 1
    jobs = summary_jobs(engine, session_id)
    assert [j for j, _ in jobs] == [str(queued[0])]

    again = api_module.post(f"/v1/sessions/{session_id}/summarize")
    assert again.status_code == 202, again.text
    if again.json()["job_id"] != jobs[0][0]:  # the first one ended in between: then this is a new job
        assert wait_status(api_module, jobs[0][0], "succeeded", "failed")["status"] in ("succeeded", "failed")
    wait_status(api_module, again.json()["job_id"], "succeeded", timeout=180)


def test_a_redelivered_summary_writes_once_and_a_lost_job_writes_nothing(
    api_module: httpx.Client, engine: Engine
) -> None:
    session_id = new_session(api_module)
    seqs = seed(engine, session_id, 2)
    tenant = tenant_of(engine, session_id)
    with Session(engine) as session, session.begin():
        job = jobs_repo.create(
            session,
            tenant_id=ensure_tenant(session, DEFAULT_TENANT),
            kind=JobKind.PROBE.value,
            task_name=TaskName.PROBE.value,
            queue="summary",
            payload={},
        )
        session.execute(text("UPDATE jobs SET status = 'running', attempts = 1 WHERE id = :id"), {"id": job.id})
        job_id = job.id
    summary = SessionSummary(
        session_id=uuid.UUID(session_id),
        tenant_id=tenant,
        version=1,
        covers_seq=seqs[-1],
        content="The user asked about two facts.",
        tokens_before=60,
        tokens_after=8,
    )

    def delivery(attempt: int) -> JobContext:  # events are never published by the write
        events = EventLog(redis.Redis(), ttl=1, maxlen=1)
        return JobContext(job_id=job_id, tenant_id=tenant, attempt=attempt, payload={}, engine=engine, events=events)

    try:
        assert save_session_summary(delivery(1), summary) is True
        assert save_session_summary(delivery(1), summary) is False
        with pytest.raises(Cancelled):  # a delivery that lost its job writes nothing
            save_session_summary(delivery(2), dataclasses.replace(summary, covers_seq=seqs[-2]))
    finally:
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE jobs SET status = 'cancelled', finished_at = now() WHERE id = :id"), {"id": job_id}
            )
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT covers_seq FROM summaries WHERE session_id = :s"), {"s": session_id}).all()
    assert [r[0] for r in rows] == [seqs[-1]]


def test_the_next_chat_prompt_carries_the_summary_instead_of_the_turns_it_covers(
    api_module: httpx.Client, engine: Engine
) -> None:
    session_id = new_session(api_module)
    seqs = seed(engine, session_id, 3)
    add_summary(engine, session_id, seqs[3], "SUMMARY-MARK: the user asked about facts 0 and 1.", before=120)
    accepted = ask(api_module, session_id, "And what about fact number 5?")

    with engine.connect() as conn:
        start = load_context(
            conn,
            tenant_id=tenant_of(engine, session_id),
            message_id=uuid.UUID(accepted["message_id"]),
            limit=6,
            model="",
        )
    question, summary, history = start.question, start.summary, start.history
    assert summary is not None and summary.covers_seq == seqs[3]
    assert [t.content for t in history] == [
        "Question 2: what is fact number 2?",
        "Fact number 2 is that the sky over Quillby is colour 2.",
    ]
    prompt = build(question=question.content, hits=[], history=history, summary=summary.content, budget=1500)
    sent = "\n".join(m["content"] for m in prompt.messages)
    assert "SUMMARY-MARK" in prompt.messages[0]["content"]
    assert "fact number 0" not in sent and "fact number 1" not in sent and "fact number 2" in sent

    job = wait_status(api_module, accepted["job_id"], "succeeded", timeout=180)
    result = job["result"]
    assert isinstance(result, dict)
    assert result["usage"]["summary_version"] == 1 and result["usage"]["summary_tokens_saved"] == 110
    assert result["history_used"] == 2


def test_beat_queues_only_stale_unsummarized_sessions_in_bounded_batches(
    api_module: httpx.Client, engine: Engine, dispatcher: Dispatcher
) -> None:
    stale = [new_session(api_module) for _ in range(2)]
    fresh, covered = new_session(api_module), new_session(api_module)
    for session_id in stale:
        seed(engine, session_id, 1, age_seconds=7200)
    seed(engine, fresh, 1)
    add_summary(engine, covered, seed(engine, covered, 1, age_seconds=7200)[-1], "All covered.")

    def run(batch: int) -> set[str]:
        with Session(engine) as session:
            return {str(s) for s in resummarize(session, dispatcher=dispatcher, stale_after=3600, batch=batch)}

    first = run(1)
    assert len(first) == 1 and first < set(stale)
    second = run(100)
    assert second == set(stale) - first  # the first one has a job in flight (or is summarized by now)
    assert run(100) == set()
    assert summary_jobs(engine, fresh) == [] and summary_jobs(engine, covered) == []
    for session_id in stale:
        (job_id, _), *_ = summary_jobs(engine, session_id)
        wait_status(api_module, job_id, "succeeded", timeout=180)
        assert api_module.get(f"/v1/sessions/{session_id}").json()["summary"]


def test_a_document_is_summarized_and_other_tenants_get_404(api_module: httpx.Client, live: Live) -> None:
    body = (
        "The Quillby harbour was rebuilt in 1902 after a storm destroyed the old pier. "
        "Today it shelters twelve fishing boats and a ferry to the island of Marrow. "
    ) * 3 + uuid.uuid4().hex
    uploaded = upload(api_module, "harbour.txt", body.encode())
    wait_status(api_module, uploaded.json()["job_id"], "succeeded", timeout=120)
    document_id = uploaded.json()["document_id"]
    session_id = new_session(api_module)

    with live.client(create_key("summary-outsider")) as other:
        assert other.post(f"/v1/documents/{document_id}/summarize").status_code == 404
        assert other.post(f"/v1/sessions/{session_id}/summarize").status_code == 404
    assert api_module.post(f"/v1/documents/{uuid.uuid4()}/summarize").status_code == 404

    accepted = api_module.post(f"/v1/documents/{document_id}/summarize")
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["events_url"].endswith(f"/v1/jobs/{accepted.json()['job_id']}/events")
    job = wait_status(api_module, accepted.json()["job_id"], "succeeded", timeout=180)
    result = job["result"]
    assert isinstance(result, dict) and result["summary"].strip()
    assert result["chunks"] >= 1 and result["tokens_before"] > 0 and result["tokens_after"] > 0
    assert result["llm_calls"] == 1
