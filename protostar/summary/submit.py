"""Queueing summary jobs, at most one in flight per session or document (a partial unique index on ``jobs``
decides, so concurrent callers never queue two): on request (the API), after a chat answer once enough
messages are unsummarized, and from beat for sessions that went stale. The two automatic ways count their
tries on the session row and back off (exponentially, capped) while the session's summaries keep failing;
a request through the API always queues."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.orm import Session

from protostar.constants import JobKind
from protostar.db.models import Job
from protostar.jobs import repo as jobs_repo
from protostar.jobs.dispatch import Dispatcher, Submitted
from protostar.jobs.kinds import KINDS
from protostar.summary import repo

logger = logging.getLogger(__name__)


def submit(
    session: Session,
    *,
    dispatcher: Dispatcher,
    kind: JobKind,
    tenant_id: uuid.UUID,
    target_id: uuid.UUID,
    quota: bool = True,
) -> Submitted:
    """The summary job of ``target_id`` (a session or a document): a new one, or the one already in flight.
    ``quota``: a caller's request counts against its tenant's queued-jobs quota; the automatic summaries (after
    an answer, beat's) do not (one per session at most, and no caller to answer 429 to)."""
    key = KINDS[kind].one_in_flight
    assert key is not None, f"{kind} is not a summary kind"
    return dispatcher.submit(session, kind=kind, tenant_id=tenant_id, payload={key: str(target_id)}, quota=quota)


def after_answer(
    session: Session,
    *,
    dispatcher: Dispatcher,
    tenant_id: uuid.UUID,
    session_id: uuid.UUID,
    every: int,
    backoff_base: float = 60.0,
    backoff_cap: float = 6 * 3600.0,
) -> Job | None:
    """Queue the session's summary once ``every`` messages are unsummarized, none is in flight and the session
    is not backing off after failed tries (each automatic try counts, as beat's do; see :func:`resummarize`)."""
    unsummarized = repo.count_after(session, session_id=session_id)
    if unsummarized < every or repo.backing_off(session, session_id=session_id):
        return None
    if jobs_repo.in_flight(session, kind=JobKind.SUMMARY_SESSION.value, key="session_id", value=str(session_id)):
        return None  # cheap check first; the unique index is what decides
    submitted = submit(
        session,
        dispatcher=dispatcher,
        kind=JobKind.SUMMARY_SESSION,
        tenant_id=tenant_id,
        target_id=session_id,
        quota=False,
    )
    if not submitted.created:
        return None
    repo.tried(session, session_id=session_id, base=backoff_base, cap=backoff_cap)
    session.commit()
    logger.info("job_id=%s session_id=%s summary queued (%d unsummarized)", submitted.job.id, session_id, unsummarized)
    return submitted.job


def resummarize(
    session: Session,
    *,
    dispatcher: Dispatcher,
    stale_after: float,
    batch: int,
    backoff_base: float = 60.0,
    backoff_cap: float = 6 * 3600.0,
) -> list[uuid.UUID]:
    """Beat: queue summaries for up to ``batch`` sessions whose unsummarized answers are older than
    ``stale_after`` seconds, that have no summary job in flight and whose backoff is over; the ids of the
    sessions queued. Each try counts on the session row and pushes its next try out (``backoff_base`` doubled
    per try since the last success, capped at ``backoff_cap``), so a summary that always fails is tried ever
    less often, not every minute."""
    stale = repo.stale_sessions(session, stale_after=stale_after, limit=batch)
    session.commit()
    queued = []
    for session_id, tenant_id in stale:
        submitted = submit(
            session,
            dispatcher=dispatcher,
            kind=JobKind.SUMMARY_SESSION,
            tenant_id=tenant_id,
            target_id=session_id,
            quota=False,
        )
        if submitted.created:
            repo.tried(session, session_id=session_id, base=backoff_base, cap=backoff_cap)
            session.commit()
            queued.append(session_id)
    if stale:
        logger.info("resummarize: %d stale sessions, %d queued", len(stale), len(queued))
    return queued
