"""For tests of the submit without a worker: a stub that stands in for Celery, and throwaway tenants (the
``pool`` fixture, in ``tests/conftest.py``, removes them with their jobs after each test)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from threading import Lock
from typing import Any

from kombu.exceptions import OperationalError
from sqlalchemy import Engine

from protostar.auth import ensure_tenant
from protostar.db.engine import make_sessionmaker

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


def new_tenant(engine: Engine) -> uuid.UUID:
    """A tenant of its own, removed by the ``pool`` fixture after the test."""
    with make_sessionmaker(engine).begin() as session:
        return ensure_tenant(session, f"{TENANT_PREFIX}{uuid.uuid4().hex[:8]}")
