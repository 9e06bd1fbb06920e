"""What a pipeline sees of its job: ids, tenant, attempt and payload; progress and events; cancel; and
:meth:`JobContext.owned`, the one guard every final write goes through. No Celery here: the worker's task
shell builds the context, and pipelines are plain functions of it and of the collaborators they use.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis
from sqlalchemy import Connection, Engine

from protostar.constants import EventType
from protostar.errors import Cancelled, JobFailed, TimeLimitExceeded
from protostar.jobs import repo
from protostar.jobs.events import EventLog, cancel_key

logger = logging.getLogger(__name__)

CANCEL_POLL = 0.25  # seconds between looks at the cancel flag
PROGRESS_EVERY = 0.5  # seconds between progress writes, except at stage changes and completion
FAILURE_LOG_EVERY = 10.0  # seconds between log lines while the watcher's checks keep failing
EVENTS_PAUSE = 5.0  # seconds events are not even tried after Redis failed to take one


@dataclass
class JobContext:
    job_id: uuid.UUID
    tenant_id: uuid.UUID
    attempt: int
    payload: dict[str, Any]
    engine: Engine
    events: EventLog
    cancelled: threading.Event = field(default_factory=threading.Event)
    deadline: float | None = None  # time.monotonic() past which the job is stopped (its soft time limit)
    timed_out: bool = False  # the deadline passed: the job was cancelled for it, and fails with time_limit
    _last_progress: tuple[str, float] = ("", 0.0)
    _cancel_hooks: list[Callable[[], None]] = field(default_factory=list)
    _events_paused_until: float = 0.0

    @contextmanager
    def owned(self) -> Iterator[Connection]:
        """A transaction in which this delivery provably still owns the job (its row is locked): a pipeline's
        final write happens only inside it, so a delivery that lost its job never overwrites the winner's."""
        with self.engine.begin() as conn:
            if not repo.lock_owned(conn, job_id=self.job_id, attempt=self.attempt):
                raise Cancelled("another delivery owns this job now")
            yield conn

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

    def emit(self, type_: EventType, data: dict[str, Any]) -> str | None:
        """Publish one event; its stream id, or None when Redis did not take it (see :meth:`publish`)."""
        ids = self.publish([(type_, data)])
        return ids[0] if ids else None

    def publish(self, events: list[tuple[EventType, dict[str, Any]]]) -> list[str]:
        """Publish events for the job's followers, at most once each. Events are a live view, not the record
        (the row is, and a follower is told the end from it), so an unavailable Redis costs followers the events
        meanwhile and never the job: the failure is logged, and for ``EVENTS_PAUSE`` seconds no event is even
        tried, so a frozen Redis does not hold a token stream up by a socket timeout per token."""
        if time.monotonic() < self._events_paused_until:
            return []
        try:
            return self.events.publish_many(self.job_id, events)
        except redis.RedisError as exc:
            self._events_paused_until = time.monotonic() + EVENTS_PAUSE
            logger.warning(
                "job_id=%s events not published for %.0fs, Redis unavailable: %s", self.job_id, EVENTS_PAUSE, exc
            )
            return []

    def progress(self, stage: str, done: int, total: int | None = None, *, persist: bool = True) -> None:
        """A ``progress`` event, and the job row's stage and counts (throttled). ``persist=False``: the event
        only, for stages too brief to be worth a database write (the row keeps its last stage)."""
        last_stage, last_at = self._last_progress
        now = time.monotonic()
        if stage == last_stage and now - last_at < PROGRESS_EVERY and done != total:
            return
        self._last_progress = (stage, now)
        if persist:
            repo.progress(self.engine, job_id=self.job_id, attempt=self.attempt, stage=stage, done=done, total=total)
        self.emit(EventType.PROGRESS, {"stage": stage, "done": done, "total": total})

    def time_up(self) -> None:
        """The deadline passed: stop the job as a cancel does (its hooks close what a thread is blocked on)."""
        self.timed_out = True
        self.cancel()

    def stopped_error(self) -> JobFailed:
        """Why the job stopped: its time limit, or a cancel request."""
        if self.timed_out:
            return TimeLimitExceeded("the job ran past its time limit and was stopped")
        return Cancelled("cancelled by request")

    def check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise self.stopped_error()

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake and raise at once when the job is cancelled (or out of time)."""
        if self.cancelled.wait(seconds):
            raise self.stopped_error()


class Watcher(threading.Thread):
    """Beats the job's heartbeat and turns a cancel request (Redis flag or DB flag) into ``ctx.cancelled``.

    The heartbeat (PostgreSQL) and the flag (Redis) are watched from two threads, so that one dependency that is
    down or frozen never stops the other's checks: above all, a frozen Redis must not let the heartbeat go stale
    and have a healthy job taken over. A failing check is retried at its next round; the job goes on.

    The heartbeat thread also keeps the job's deadline (``ctx.deadline``, its soft time limit): past it the job is
    cancelled (:meth:`JobContext.time_up`) and fails with ``time_limit``. Celery enforces time limits on the prefork
    pool only; this enforces them on every pool.
    """

    def __init__(self, ctx: JobContext, client: redis.Redis, *, heartbeat_interval: float) -> None:
        super().__init__(name=f"watch-{ctx.job_id}", daemon=True)
        self.ctx, self.client, self.interval = ctx, client, heartbeat_interval
        self.stopped = threading.Event()
        self.lost = False
        self._failing_since: dict[str, float] = {}
        self._logged_at: dict[str, float] = {}
        self._flag = threading.Thread(target=self._watch_flag, name=f"flag-{ctx.job_id}", daemon=True)

    def start(self) -> None:
        super().start()
        self._flag.start()

    def run(self) -> None:
        ctx = self.ctx
        next_beat = time.monotonic() + self.interval
        while not self.stopped.wait(self._until(next_beat)):
            if ctx.deadline is not None and not ctx.timed_out and time.monotonic() >= ctx.deadline:
                logger.warning("job_id=%s past its time limit: stopping it", ctx.job_id)
                ctx.time_up()
            if time.monotonic() < next_beat:
                continue
            next_beat = time.monotonic() + self.interval
            try:
                state = repo.heartbeat(ctx.engine, job_id=ctx.job_id, attempt=ctx.attempt)
            except Exception as exc:  # noqa: BLE001 (boundary: logged; a failed beat is retried next round)
                self._failed("heartbeat", exc)
                continue
            self._failing_since.pop("heartbeat", None)
            if state is None:
                logger.warning("job_id=%s was taken over by another delivery", ctx.job_id)
                self.lost = True
                ctx.cancel()
            elif state:
                ctx.cancel()

    def _until(self, next_beat: float) -> float:
        """Seconds to sleep: until the next beat, or the deadline if that comes first."""
        wake = next_beat
        if self.ctx.deadline is not None and not self.ctx.timed_out:
            wake = min(wake, self.ctx.deadline)
        return max(wake - time.monotonic(), 0.0)

    def _watch_flag(self) -> None:
        key = cancel_key(self.ctx.job_id)
        while not self.stopped.wait(CANCEL_POLL):
            try:
                flagged = self.client.exists(key)
            except Exception as exc:  # noqa: BLE001 (boundary: logged; the DB flag is the truth meanwhile)
                self._failed("cancel check", exc)
                continue
            self._failing_since.pop("cancel check", None)
            if flagged:
                self.ctx.cancel()

    def _failed(self, check: str, exc: Exception) -> None:
        """Log the first failure of a run of them, and then one line every ``FAILURE_LOG_EVERY`` seconds."""
        now = time.monotonic()
        since = self._failing_since.setdefault(check, now)
        if since == now:
            self._logged_at[check] = now
            logger.warning("job_id=%s %s failed, retrying: %r", self.ctx.job_id, check, exc)
        elif now - self._logged_at.get(check, 0.0) >= FAILURE_LOG_EVERY:
            self._logged_at[check] = now
            logger.warning("job_id=%s %s failing for %.0fs: %r", self.ctx.job_id, check, now - since, exc)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)
        self._flag.join(timeout=1)  # a check blocked on a frozen Redis ends by its socket timeout, on its own
