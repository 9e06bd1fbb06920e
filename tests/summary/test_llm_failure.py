"""A summary whose LLM fails ends ``failed`` with the LLM's reason and writes nothing: the previous summary stays
in force. The real job shell and summary pipelines run in this process against the live PostgreSQL and Redis;
only the LLM is another: a local HTTP server that answers every call with a 500."""

from __future__ import annotations

import http.server
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from celery import Task
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from protostar.bundle import Clients
from protostar.constants import JobKind, TaskName
from protostar.errors import LLMFailed
from protostar.jobs import repo as jobs_repo
from protostar.jobs.broker import create_celery
from protostar.jobs.kinds import KINDS
from protostar.summary import repo as summary_repo
from protostar.summary.pipeline import summarize_document, summarize_session
from protostar.worker.shell import run_job
from protostar.worker.tasks.summary import summary_document_task, summary_session_task
from tests.api.test_jobs import wait_status
from tests.chat.test_chat_api import new_session
from tests.conftest import Live
from tests.ingest.test_documents_api import upload
from tests.sse import read_events
from tests.summary.test_summary import add_summary, seed, tenant_of

SummaryPipeline = Callable[..., dict[str, Any]]


@dataclass
class BrokenLLM:
    url: str
    calls: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def api_module(live: Live) -> Iterator[httpx.Client]:
    with live.client() as client:
        yield client


@pytest.fixture
def broken_llm() -> Iterator[BrokenLLM]:
    calls: list[str] = []

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            calls.append(self.path)
            body = json.dumps({"error": {"message": "the model crashed", "type": "server_error"}}).encode()
            self.send_response(500)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield BrokenLLM(f"http://127.0.0.1:{server.server_address[1]}/v1", calls)
    server.shutdown()
    server.server_close()


@pytest.fixture
def resources(live: Live, broken_llm: BrokenLLM) -> Iterator[Clients]:
    """A summary worker's resources, as a worker builds them, but with the broken LLM (one retry, so it is quick)."""
    settings = live.settings.model_copy(update={"llm_base_url": broken_llm.url, "llm_max_retries": 1})
    built = Clients(settings=settings, celery=create_celery(settings), role="worker")
    yield built
    built.engine.dispose()
    built.redis.close()


def run_failing(
    resources: Clients, task: Task, pipeline: SummaryPipeline, *, kind: JobKind, tenant_id: uuid.UUID, target: str
) -> str:
    """Queue a summary job (not sent: this process runs it) and run it through the job shell; its id."""
    task_name = TaskName(task.name)
    with Session(resources.engine) as session, session.begin():
        job = jobs_repo.create(
            session,
            tenant_id=tenant_id,
            kind=kind.value,
            task_name=task_name.value,
            queue=KINDS[kind].queue.value,  # type: ignore[union-attr]
            payload={"session_id" if kind == JobKind.SUMMARY_SESSION else "document_id": target},
        )
        job_id = str(job.id)
    with pytest.raises(LLMFailed):
        run_job(
            task,
            resources,
            job_id,
            lambda ctx: pipeline(ctx, engine=resources.engine, llm=resources.llm, settings=resources.settings),
        )
    return job_id


def assert_failed_by_the_llm(api: httpx.Client, job_id: str, broken_llm: BrokenLLM) -> None:
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["result"] is None
    assert job["error"]["code"] == "llm_failed"
    assert "HTTP 500" in job["error"]["message"], job["error"]
    assert broken_llm.url.split("/v1")[0] not in job["error"]["message"], "the internal LLM URL reached the caller"
    assert broken_llm.calls == ["/v1/chat/completions"] * 2  # the call and its one retry
    events = list(read_events(api, job_id))
    assert [e.event for e in events][-2:] == ["error", "done"] and events[-1].data["status"] == "failed"


def test_a_session_summary_whose_llm_fails_leaves_the_previous_version_in_force(
    api_module: httpx.Client, engine: Engine, resources: Clients, broken_llm: BrokenLLM
) -> None:
    session_id = new_session(api_module)
    seqs = seed(engine, session_id, 3)
    previous = "PREVIOUS: the user asked what fact number 0 is."
    add_summary(engine, session_id, seqs[1], previous)

    job_id = run_failing(
        resources,
        summary_session_task,
        summarize_session,
        kind=JobKind.SUMMARY_SESSION,
        tenant_id=tenant_of(engine, session_id),
        target=session_id,
    )

    assert_failed_by_the_llm(api_module, job_id, broken_llm)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT version, covers_seq, content FROM summaries WHERE session_id = :s"), {"s": session_id}
        ).all()
        latest = summary_repo.latest(conn, session_id=uuid.UUID(session_id))
    assert [tuple(r) for r in rows] == [(1, seqs[1], previous)]  # no new version
    assert latest is not None and latest.version == 1 and latest.content == previous
    assert api_module.get(f"/v1/sessions/{session_id}").json()["summary"] == previous


def test_a_document_summary_whose_llm_fails_leaves_the_previous_one_in_force(
    api_module: httpx.Client, engine: Engine, resources: Clients, broken_llm: BrokenLLM
) -> None:
    body = f"The Quillby ferry crosses to Marrow twice a day, weather permitting. {uuid.uuid4().hex}\n" * 5
    uploaded = upload(api_module, "ferry.txt", body.encode())
    wait_status(api_module, uploaded.json()["job_id"], "succeeded", timeout=120)
    document_id = uploaded.json()["document_id"]
    with engine.begin() as conn:
        tenant_id = conn.execute(text("SELECT tenant_id FROM documents WHERE id = :d"), {"d": document_id}).scalar_one()
        summary_repo.save_document(
            conn,
            document_id=uuid.UUID(document_id),
            tenant_id=tenant_id,
            content="PREVIOUS: a ferry timetable.",
            chunk_count=1,
            tokens_before=80,
            tokens_after=7,
            job_id=uuid.uuid4(),
        )
    before = api_module.get(f"/v1/documents/{document_id}").json()["summary"]
    assert before["content"] == "PREVIOUS: a ferry timetable." and before["tokens_before"] == 80

    job_id = run_failing(
        resources,
        summary_document_task,
        summarize_document,
        kind=JobKind.SUMMARY_DOCUMENT,
        tenant_id=tenant_id,
        target=document_id,
    )

    assert_failed_by_the_llm(api_module, job_id, broken_llm)
    assert api_module.get(f"/v1/documents/{document_id}").json()["summary"] == before
