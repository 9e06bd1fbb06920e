"""The probe: a synthetic job an operator sends to any queue to check it end to end.

It walks ``steps`` progress steps of ``sleep`` seconds each, honours cancel, and reports where it ran.
``fail`` makes it end the way a real job can: ``input`` (rejected, no retry) or ``transient`` (retried); or
``crash``: after its steps the prefork child running it kills itself (SIGKILL), as a poison input would, so
an operator (or the fault tests) can check that a child dying on every delivery ends the job ``worker_lost``
after ``max_attempts``. Only a prefork child crashes: elsewhere (a thread pool, whose process every other job
shares) the probe rejects its input instead.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from billiard.process import current_process  # type: ignore[import-untyped]
from celery import Task, shared_task

from protostar.constants import TaskName
from protostar.errors import InputRejected, Transient
from protostar.jobs.context import JobContext
from protostar.worker import resources
from protostar.worker.shell import run_job


def probe(ctx: JobContext, *, worker: str) -> dict[str, Any]:
    steps = int(ctx.payload.get("steps", 1))
    pause = float(ctx.payload.get("sleep", 0.0))
    fail = ctx.payload.get("fail")
    for step in range(1, steps + 1):
        if pause:
            ctx.sleep(pause)
        ctx.check_cancelled()
        ctx.progress("probe", step, steps)
    if fail == "crash":
        if not current_process().name.startswith("ForkPoolWorker"):
            raise InputRejected("the probe crashes only a prefork child; this worker runs a thread pool")
        os.kill(os.getpid(), signal.SIGKILL)
    if fail == "input":
        raise InputRejected("the probe was asked to reject its input")
    if fail == "transient":
        raise Transient("the probe was asked to fail transiently")
    return {"steps": steps, "worker": worker, "attempt": ctx.attempt}


@shared_task(bind=True, name=TaskName.PROBE.value, acks_late=True)
def probe_task(self: Task, job_id: str) -> dict[str, Any] | None:
    clients = resources.current()
    return run_job(self, clients, job_id, lambda ctx: probe(ctx, worker=clients.worker_name))
