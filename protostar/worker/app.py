"""The Celery app the workers and beat run: ``celery -A protostar.worker.app worker ...``.

Clients are never built here: each process builds its own on first use, and a prefork child drops what
it inherited (``worker_process_init``).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_process_init

from protostar.celery_app import create_celery
from protostar.settings import get_settings
from protostar.worker import resources

TASK_MODULES = ("protostar.worker.tasks.probe", "protostar.worker.tasks.maintenance")

logger = logging.getLogger(__name__)

app = create_celery(get_settings(), role="worker")
app.conf.include = list(TASK_MODULES)
resources.init(app)


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    resources.after_fork()
