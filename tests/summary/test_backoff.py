"""A session whose summary keeps failing is tried by beat (and after chat answers) ever less often (exponential,
capped), not every minute; a summary that succeeds starts the count over. The sends go nowhere here: each try
is ended by hand, as a failing one would end."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from protostar.constants import JobStatus
from protostar.db.models import Job
from protostar.jobs import repo as jobs_repo
from protostar.jobs.dispatch import Dispatcher
from protostar.jobs.ending import Ending
from protostar.jobs.turns import Released
from protostar.summary.submit import after_answer, resummarize
from tests.chat.test_chat_api import new_session
from tests.summary.test_summary import add_summary, seed, summary_jobs, tenant_of


@dataclass
class Unsent(Dispatcher):
    """Commits jobs like the real dispatcher but sends nothing, so no worker runs them."""

    def send(self, job: Job | Released, status: dict[str, Any] | None = None) -> None:
        return None


def backoff_state(engine: Engine, session_id: str) -> tuple[int, datetime | None, datetime]:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT summary_tries, summary_retry_at, now() FROM sessions WHERE id = :id"), {"id": session_id}
        ).one()
    return int(row[0]), row[1], row[2]


def fail_open_summary(engine: Engine, session_id: str) -> None:
    (job_id, _), *_ = [j for j in summary_jobs(engine, session_id) if j[1] == "queued"]
    with engine.begin() as conn:
        ending = Ending(JobStatus.FAILED, "llm_failed", "the LLM failed")
        assert jobs_repo.finish(conn, job_id=uuid.UUID(job_id), ending=ending, only_from=(JobStatus.QUEUED,))


def test_a_failing_session_summary_backs_off_and_a_success_starts_over(
    api: httpx.Client, engine: Engine, dispatcher: Dispatcher
) -> None:
    unsent = Unsent(celery=dispatcher.celery, engine=engine, events=dispatcher.events, settings=dispatcher.settings)
    session_id = new_session(api)
    seeded = seed(engine, session_id, 1, age_seconds=7200)

    def beat() -> set[str]:
        with Session(engine) as session:
            queued = resummarize(
                session, dispatcher=unsent, stale_after=3600, batch=1000, backoff_base=60, backoff_cap=3600
            )
            return {str(s) for s in queued}

    assert session_id in beat()
    tries, retry_at, now = backoff_state(engine, session_id)
    assert tries == 1 and retry_at is not None and retry_at > now
    first_wait = retry_at - now
    fail_open_summary(engine, session_id)
    assert session_id not in beat()  # failed, but its backoff is not over: not queued again
    with Session(engine) as session:  # nor after the next chat answer
        sid = uuid.UUID(session_id)
        assert (
            after_answer(session, dispatcher=unsent, tenant_id=tenant_of(engine, session_id), session_id=sid, every=1)
            is None
        )
    assert [s for _, s in summary_jobs(engine, session_id)] == ["failed"]

    with engine.begin() as conn:  # the backoff is over
        conn.execute(text("UPDATE sessions SET summary_retry_at = now() WHERE id = :id"), {"id": session_id})
    assert session_id in beat()
    tries, retry_at, now = backoff_state(engine, session_id)
    assert tries == 2 and retry_at is not None and retry_at - now > first_wait  # waits longer each try
    fail_open_summary(engine, session_id)

    with engine.begin() as conn:  # a cap holds however many tries failed
        conn.execute(
            text("UPDATE sessions SET summary_tries = 500, summary_retry_at = now() WHERE id = :id"), {"id": session_id}
        )
    assert session_id in beat()
    tries, retry_at, now = backoff_state(engine, session_id)
    assert tries == 501 and retry_at is not None and (retry_at - now).total_seconds() <= 3600
    fail_open_summary(engine, session_id)

    add_summary(engine, session_id, seeded[-1], "All covered.")  # a summary succeeds
    assert backoff_state(engine, session_id)[:2] == (0, None)
