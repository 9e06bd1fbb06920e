"""The job shell: what every task does around its pipeline.

claim the row → publish ``running`` → heartbeat and watch for cancel in a thread → run the pipeline →
record success or failure with a reason → publish ``done``. Pipelines are plain functions of a
:class:`JobContext`; they never see Celery.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from protostar.constants import EventType, JobStatus
from protostar.errors import Cancelled, OutOfMemory, ProtostarError, Transient
from protostar.jobs import repo
from protostar.jobs.events import EventLog, cancel_key, final_events
from protostar.worker.limits import describe as _limit_text
from protostar.worker.resources import Resources

logger = logging.getLogger(__name__)

CANCEL_POLL = 0.25
PROGRESS_EVERY = 0.5  # seconds between progress writes, except at stage changes and completion

Pipeline = Callable[["JobContext"], dict[str, Any]]
OnFailure = Callable[["JobContext", JobStatus, str, str], None]


@dataclass
class JobContext:
    job_id: uuid.UUID
    tenant_id: uuid.UUID
    attempt: int
    payload: dict[str, Any]
    resources: Resources
    cancelled: threading.Event = field(default_factory=threading.Event)
    _last_progress: tuple[str, float] = ("", 0.0)
    _cancel_hooks: list[Callable[[], None]] = field(default_factory=list)

    def cancel(self) -> None:
        """Mark the job cancelled and run the hooks (e.g. close an upstream stream a thread is blocked on)."""
        if self.cancelled.is_set():
            return
        self.cancelled.set()
        for hook in list(self._cancel_hooks):
            try:
                hook()
            except Exception:  # boundary: a failing hook must not stop the others or the watcher
                logger.exception("job_id=%s cancel hook failed", self.job_id)

    def on_cancel(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Run ``hook`` from the watcher thread when the job is cancelled; returns the function that removes it."""
        self._cancel_hooks.append(hook)
        if self.cancelled.is_set():
            hook()
        return lambda: self._cancel_hooks.remove(hook) if hook in self._cancel_hooks else None

    @property
    def events(self) -> EventLog:
        return self.resources.events

    def emit(self, type_: EventType, data: dict[str, Any]) -> str:
        return self.events.publish(self.job_id, type_, data)

    def progress(self, stage: str, done: int, total: int | None = None, *, persist: bool = True) -> None:
        """A ``progress`` event, and the job row's stage and counts (throttled). ``persist=False``: the event
        only, for stages too brief to be worth a database write (the row keeps its last stage)."""
        last_stage, last_at = self._last_progress
        now = time.monotonic()
        if stage == last_stage and now - last_at < PROGRESS_EVERY and done != total:
            return
        self._last_progress = (stage, now)
        if persist:
            repo.progress(
                self.resources.engine, job_id=self.job_id, attempt=self.attempt, stage=stage, done=done, total=total
            )
        self.emit(EventType.PROGRESS, {"stage": stage, "done": done, "total": total})

    def check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled("cancelled by request")

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake and raise at once when the job is cancelled."""
        if self.cancelled.wait(seconds):
            raise Cancelled("cancelled by request")


class Watcher(threading.Thread):
    """Beats the job's heartbeat and turns a cancel request (Redis flag or DB flag) into ``ctx.cancelled``."""

    def __init__(self, ctx: JobContext) -> None:
        super().__init__(name=f"watch-{ctx.job_id}", daemon=True)
        self.ctx = ctx
        self.stopped = threading.Event()
        self.lost = False

    def run(self) -> None:
        res, ctx = self.ctx.resources, self.ctx
        interval = res.settings.heartbeat_interval
        next_beat = time.monotonic() + interval
        while not self.stopped.wait(CANCEL_POLL):
            try:
                if res.redis.exists(cancel_key(ctx.job_id)):
                    ctx.cancel()
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + interval
                    state = repo.heartbeat(res.engine, job_id=ctx.job_id, attempt=ctx.attempt)
                    if state is None:
                        logger.warning("job_id=%s was taken over by another delivery", ctx.job_id)
                        self.lost = True
                        ctx.cancel()
                    elif state:
                        ctx.cancel()
            except Exception:  # boundary: a failed beat is retried next round, the job goes on
                logger.exception("job_id=%s heartbeat failed", ctx.job_id)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)


def backoff(attempt: int, *, base: float = 2.0, cap: float = 60.0) -> float:
    """Full-jitter exponential backoff."""
    return random.uniform(0, min(cap, base * 2**attempt))  # noqa: S311 (jitter, not a secret)


def run_job(
    task: Task, resources: Resources, job_id: str, pipeline: Pipeline, *, on_failure: OnFailure | None = None
) -> dict[str, Any] | None:
    """Run ``pipeline`` for one delivery of ``job_id``. Safe to call again for the same job."""
    jid = uuid.UUID(job_id)
    settings = resources.settings
    claim = repo.claim(
        resources.engine, job_id=jid, worker=resources.worker_name, takeover_after=settings.takeover_after
    )
    if claim.reason == "busy":
        # Another delivery holds a fresh heartbeat. Look again once it would be stale.
        logger.info("job_id=%s is running elsewhere; checking again later", jid)
        max_retries = int(settings.reap_after / settings.takeover_after) + 2
        raise task.retry(countdown=settings.takeover_after, max_retries=max_retries)
    if claim.job is None or claim.reason != "claimed":
        logger.info("job_id=%s not run: %s", jid, claim.reason)
        return None

    job = claim.job
    ctx = JobContext(
        job_id=jid, tenant_id=job.tenant_id, attempt=job.attempts, payload=job.payload, resources=resources
    )
    ctx.emit(EventType.STATUS, {"status": JobStatus.RUNNING.value, "attempt": job.attempts})
    logger.info("job_id=%s kind=%s attempt=%d started", jid, job.kind, job.attempts)
    watcher = Watcher(ctx)
    watcher.start()
    try:
        result = pipeline(ctx)
    except Cancelled as exc:
        if watcher.lost:
            return None
        _end(ctx, JobStatus.CANCELLED, error=exc, on_failure=on_failure)
        return None
    except Transient as exc:
        if job.attempts < settings.max_attempts and repo.release(
            resources.engine, job_id=jid, attempt=job.attempts, stage="retrying"
        ):
            delay = backoff(job.attempts)
            logger.warning("job_id=%s transient failure, retry in %.1fs: %s", jid, delay, exc.message)
            ctx.emit(
                EventType.STATUS, {"status": JobStatus.QUEUED.value, "retry_in": round(delay, 1), "reason": exc.message}
            )
            raise task.retry(countdown=delay, max_retries=settings.max_attempts) from exc
        _end(ctx, JobStatus.FAILED, error=exc, on_failure=on_failure)
        raise
    except SoftTimeLimitExceeded as exc:
        _end(
            ctx, JobStatus.FAILED, error=ProtostarError("time limit exceeded"), code="time_limit", on_failure=on_failure
        )
        raise exc
    except MemoryError:
        # The process hit its address-space limit (an ingest child's RLIMIT_AS): the input asked for more than a
        # worker may use. The allocation that failed is unwound by now, so the process carries on.
        error = OutOfMemory(f"the job needed more memory than a worker may use ({_limit_text()})")
        _end(ctx, JobStatus.FAILED, error=error, on_failure=on_failure)
        raise error from None  # Celery re-raises a MemoryError itself, which would take the child down
    except Exception as exc:  # boundary: record the failure on the job, then let Celery see it
        logger.exception("job_id=%s failed", jid)
        _end(ctx, JobStatus.FAILED, error=exc, on_failure=on_failure)
        raise
    finally:
        watcher.stop()
    _end(ctx, JobStatus.SUCCEEDED, result=result)
    return result


def _end(
    ctx: JobContext,
    status: JobStatus,
    *,
    result: dict[str, Any] | None = None,
    error: BaseException | None = None,
    code: str | None = None,
    on_failure: OnFailure | None = None,
) -> None:
    code = code or (error.code if isinstance(error, ProtostarError) else "internal" if error else None)
    message = (
        (error.message if isinstance(error, ProtostarError) else str(error) or type(error).__name__)
        if error is not None
        else None
    )
    if not repo.finish(
        ctx.resources.engine,
        job_id=ctx.job_id,
        attempt=ctx.attempt,
        status=status,
        result=result,
        error_code=code,
        error_message=message,
    ):
        logger.warning("job_id=%s ended %s but another delivery owns it now", ctx.job_id, status.value)
        return
    logger.info("job_id=%s ended %s code=%s message=%s", ctx.job_id, status.value, code, message)
    if on_failure is not None and status != JobStatus.SUCCEEDED:
        on_failure(ctx, status, code or "internal", message or "")
    ctx.events.publish_many(ctx.job_id, final_events(status, code, message))
