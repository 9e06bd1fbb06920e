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
from typing import TYPE_CHECKING, Any

import redis
from sqlalchemy import Connection, Engine

from protostar.constants import EventType
from protostar.errors import Cancelled, JobFailed, TimeLimitExceeded
from protostar.jobs import repo
from protostar.jobs.events import EventLog
from protostar.jobs.repo import Beat

if TYPE_CHECKING:
    from protostar.jobs.watcher import ProcessWatcher, Watch

logger = logging.getLogger(__name__)

PROGRESS_EVERY = 0.5  # seconds between progress events, except at stage changes and completion
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
    pending_progress: Beat | None = None  # progress recorded and not yet written to the row
    _held: list[tuple[EventType, dict[str, Any]]] = field(default_factory=list)  # to go with the next event
    _held_lock: threading.Lock = field(default_factory=threading.Lock)
    _watch: Watch | None = None

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

    def hold(self, type_: EventType, data: dict[str, Any]) -> None:
        """An event sent with the job's next one, in the same round trip (pipelines publish their first event
        at once), or by the watcher within ``watcher.CANCEL_POLL`` seconds if none comes (:meth:`flush_held`)."""
        with self._held_lock:
            self._held.append((type_, data))

    def flush_held(self) -> None:
        """Publish the events held back, if any (the watcher's flag thread, each poll)."""
        if self._held:
            with self._held_lock:
                if self._held:
                    held, self._held = self._held, []
                    self._publish(held)

    def publish(self, events: list[tuple[EventType, dict[str, Any]]]) -> list[str]:
        """Publish events (after any held back, in the same round trip): their stream ids (see :meth:`_publish`)."""
        if self._held:
            with self._held_lock:  # held while publishing: a concurrent flush cannot reorder them
                held, self._held = self._held, []
                return self._publish(held + events)[len(held) :]
        return self._publish(events)

    def _publish(self, events: list[tuple[EventType, dict[str, Any]]]) -> list[str]:
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
        """A ``progress`` event (throttled), and the job row's stage and counts: written by the process's watcher
        within ``watcher.PROGRESS_DELAY`` seconds, with the other jobs' heartbeats (or with the job's ending, if
        it comes first), not by a statement of its own. ``persist=False``: the event only, for stages too brief
        to be worth a database write (the row keeps its last stage)."""
        last_stage, last_at = self._last_progress
        now = time.monotonic()
        if stage == last_stage and now - last_at < PROGRESS_EVERY and done != total:
            return
        self._last_progress = (stage, now)
        if persist:
            beat = Beat(self.job_id, self.attempt, stage, done, total)
            if self._watch is None:  # not watched (a context built by hand): written now
                repo.heartbeat(self.engine, [beat])
            else:  # written by the watcher's next beat, soon, or with the job's ending if that comes first
                self.pending_progress = beat
                self._watch.progressed()
        self.emit(EventType.PROGRESS, {"stage": stage, "done": done, "total": total})

    def progress_written(self, written: Beat | None) -> None:
        """The watcher wrote ``written`` to the row: it is no longer pending, unless newer progress came since."""
        if written is not None and self.pending_progress is written:
            self.pending_progress = None

    def watched_by(self, watcher: ProcessWatcher) -> Watch:
        """Have ``watcher`` beat this job, write its progress and turn its cancel flags and deadline into
        :attr:`cancelled` until :meth:`unwatch`."""
        self._watch = watcher.watch(self)
        return self._watch

    def unwatch(self) -> None:
        """The run is over (it ends, fails or goes back to its queue): no more beats or flag checks for it."""
        if self._watch is not None:
            self._watch.stop()

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
