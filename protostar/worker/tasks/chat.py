"""The ``chat`` queue: one answer per task. The shell; the work is in :mod:`protostar.chat.pipeline`."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from protostar.chat.pipeline import answer
from protostar.constants import TaskName
from protostar.worker import resources
from protostar.worker.shell import run_job


@shared_task(bind=True, name=TaskName.CHAT.value, acks_late=True)
def chat_task(self: Task, job_id: str) -> dict[str, Any] | None:
    return run_job(self, resources.current(), job_id, answer)
