"""For tests of the submit without a worker: a dispatcher whose sends a stub broker records instead of queueing
them, and throwaway tenants (the ``pool`` fixture, in ``tests/conftest.py``, removes them with their jobs after
each test)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from threading import Lock
from typing import Any

from kombu.exceptions import OperationalError
from sqlalchemy import Engine

from protostar.auth import ensure_tenant
from protostar.constants import EventType
from protostar.db.engine import make_sessionmaker
from protostar.db.models import Job
from protostar.jobs.dispatch import Dispatcher
from protostar.jobs.turns import Released

TENANT_PREFIX = "submit-once-"


@dataclass
class Broker:
    """Records sends; refuses them all when ``down``."""

    down: bool = False
    sent: list[str] = field(default_factory=list)
    lock: Lock = field(default_factory=Lock)

    def send_task(self, name: str, **options: Any) -> None:
        if self.down:
            raise OperationalError("refused")
        with self.lock:
            self.sent.append(options["task_id"])


@dataclass
class Stubbed(Dispatcher):
    """A dispatcher whose ``celery`` is a :class:`Broker`: a send writes the job's event, as a real one does
    first, then hands the job to the broker, which records it or refuses it."""

    def send(self, job: Job | Released, status: dict[str, Any] | None = None) -> None:
        if status is not None:
            self.events.publish(job.id, EventType.STATUS, status)
        self.celery.send_task(job.task_name, task_id=str(job.id))


def new_tenant(engine: Engine) -> uuid.UUID:
    """A tenant of its own, removed by the ``pool`` fixture after the test."""
    with make_sessionmaker(engine).begin() as session:
        return ensure_tenant(session, f"{TENANT_PREFIX}{uuid.uuid4().hex[:8]}")
