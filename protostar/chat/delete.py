"""Delete a chat session: its queued or running chat and summary jobs are cancelled (the ordinary cancel: a
queued one ends at once, a running one stops at its next checkpoint and writes nothing, since the session is
gone), then the row, its messages and its summaries in one statement."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.orm import Session

from protostar.chat import repo
from protostar.constants import JobStatus
from protostar.jobs.cancel import cancel
from protostar.jobs.dispatch import Dispatcher

logger = logging.getLogger(__name__)


def delete_session(session: Session, *, dispatcher: Dispatcher, tenant_id: uuid.UUID, session_id: uuid.UUID) -> None:
    """``NotFound`` for another tenant's session (or none)."""
    chat = repo.get_session(session, tenant_id=tenant_id, session_id=session_id)
    freed: set[str] = set()
    ended: list[uuid.UUID] = []
    for job_id in repo.jobs_in_flight(session, tenant_id=tenant_id, session_id=chat.id):
        job = cancel(
            session, tenant_id=tenant_id, job_id=job_id, client=dispatcher.events.client, events=dispatcher.events
        )
        if job.status == JobStatus.CANCELLED and job.started_at is None:  # ended queued: its turn is free
            freed.add(job.queue)
        if job.status == JobStatus.CANCELLED:
            ended.append(job.id)
    repo.remove_session(session, session_id=session_id)
    session.commit()
    for queue in freed:
        dispatcher.next_turn(tenant_id=tenant_id, queue=queue)
    for job_id in ended:  # as the cancel route: the webhook deliveries of the jobs ended here
        dispatcher.send_webhooks(job_id=job_id)
    logger.info("session_id=%s deleted", session_id)
