"""One watcher per worker process for all the jobs it runs: heartbeats, pending progress, cancel flags, deadlines.

Two threads per process, started with its first job and kept (each waits while no job runs), instead of two per
job:

* the **beat** thread (PostgreSQL) beats every running job of the process in one statement every
  ``heartbeat_interval`` (``jobs.repo.heartbeat``), writing with it the progress the jobs recorded since
  (``JobContext.progress`` defers row writes: a job that ends first writes its progress with its ending). A job
  missing from the answer was taken over: it is marked ``lost`` and cancelled; a job whose row says
  ``cancel_requested`` is cancelled. The same thread keeps each job's deadline (its soft time limit): past it the
  job is stopped (:meth:`JobContext.time_up`) and fails ``time_limit``. Celery enforces time limits on the
  prefork pool only; this enforces them on every pool.
* the **flag** thread (Redis) reads every running job's cancel flag in one round trip (``MGET``) each
  ``CANCEL_POLL`` seconds, and cancels the flagged ones. It also publishes the events a job held back to send with
  its next one (``JobContext.hold``: its ``running`` status) when no other came meanwhile.

The two dependencies are watched from separate threads so that one that is down or frozen never stops the
other's checks: above all, a frozen Redis must not let the heartbeats go stale and have healthy jobs taken over.
A failing check is retried at its next round; the jobs go on.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Protocol

import redis
from sqlalchemy import Engine

from protostar.jobs import repo
from protostar.jobs.events import cancel_key

logger = logging.getLogger(__name__)

CANCEL_POLL = 0.25  # seconds between looks at the cancel flags
PROGRESS_DELAY = 0.5  # seconds a recorded progress may wait before the beat thread writes it to the row
FAILURE_LOG_EVERY = 10.0  # seconds between log lines while a check keeps failing


class Watched(Protocol):
    """What the watcher needs of a job (``jobs.context.JobContext``)."""

    job_id: uuid.UUID
    attempt: int
    deadline: float | None
    timed_out: bool
    pending_progress: repo.Beat | None

    def cancel(self) -> None: ...

    def time_up(self) -> None: ...

    def progress_written(self, written: repo.Beat | None) -> None: ...

    def flush_held(self) -> None: ...


@dataclass(eq=False)
class Watch:
    """One job's place in its process's watcher; :meth:`stop` when the job's run is over."""

    ctx: Watched
    watcher: ProcessWatcher
    lost: bool = False  # another delivery took the job over (its heartbeat found the row no longer ours)
    stopped: bool = field(default=False, init=False)

    def stop(self) -> None:
        self.stopped = True
        self.watcher.forget(self)

    def progressed(self) -> None:
        """The job recorded progress: the beat thread writes it within ``PROGRESS_DELAY`` seconds."""
        self.watcher.flush_by(time.monotonic() + PROGRESS_DELAY)


class ProcessWatcher:
    """The watcher of the jobs of one process (see the module docstring); :func:`for_process` gives it."""

    def __init__(self, engine: Engine, client: redis.Redis, *, heartbeat_interval: float) -> None:
        self.engine, self.client, self.interval = engine, client, heartbeat_interval
        self._lock = threading.Lock()
        self._watches: dict[uuid.UUID, Watch] = {}
        self._wake = threading.Event()  # the beat thread: a job came, or progress is to be written
        self._busy = threading.Event()  # the flag thread: jobs are running
        self._flush_at: float | None = None
        self._failing_since: dict[str, float] = {}
        self._logged_at: dict[str, float] = {}
        self._threads: list[threading.Thread] = []

    def watch(self, ctx: Watched) -> Watch:
        """Start watching ``ctx``'s job: its first beat comes within ``heartbeat_interval`` (its claim beat it),
        its first look at the cancel flag within ``CANCEL_POLL`` seconds."""
        watch = Watch(ctx, self)
        with self._lock:
            self._watches[ctx.job_id] = watch
            if not self._threads:
                self._threads = [
                    threading.Thread(target=self._beat_loop, name="job-beats", daemon=True),
                    threading.Thread(target=self._flag_loop, name="job-cancel-flags", daemon=True),
                ]
                for thread in self._threads:
                    thread.start()
        self._busy.set()
        self._wake.set()
        return watch

    def forget(self, watch: Watch) -> None:
        with self._lock:
            if self._watches.get(watch.ctx.job_id) is watch:
                del self._watches[watch.ctx.job_id]
            if not self._watches:
                self._busy.clear()

    def flush_by(self, when: float) -> None:
        with self._lock:
            if self._flush_at is None or when < self._flush_at:
                self._flush_at = when
        self._wake.set()

    def _current(self) -> list[Watch]:
        with self._lock:
            return list(self._watches.values())

    # --- the beat thread (PostgreSQL) ----------------------------------------------------------------------

    def _beat_loop(self) -> None:
        next_beat = time.monotonic() + self.interval
        while True:
            watches = self._current()
            if not watches:
                self._wake.wait()
                self._wake.clear()
                next_beat = max(next_beat, time.monotonic())
                continue
            self._wake.wait(self._until(watches, next_beat))
            self._wake.clear()
            now = time.monotonic()
            for watch in self._current():
                ctx = watch.ctx
                if ctx.deadline is not None and not ctx.timed_out and now >= ctx.deadline:
                    logger.warning("job_id=%s past its time limit: stopping it", ctx.job_id)
                    ctx.time_up()
            with self._lock:
                due = now >= next_beat or (self._flush_at is not None and now >= self._flush_at)
                if due:
                    self._flush_at = None
            if due:
                next_beat = now + self.interval
                self._beat(self._current())

    def _until(self, watches: list[Watch], next_beat: float) -> float:
        """Seconds to sleep: until the next beat, a progress write or the first deadline, whichever comes first."""
        wake = next_beat
        if self._flush_at is not None:
            wake = min(wake, self._flush_at)
        for watch in watches:
            ctx = watch.ctx
            if ctx.deadline is not None and not ctx.timed_out:
                wake = min(wake, ctx.deadline)
        return max(wake - time.monotonic(), 0.0)

    def _beat(self, watches: list[Watch]) -> None:
        if not watches:
            return
        taken = [(w, w.ctx.pending_progress) for w in watches]
        beats = [
            repo.Beat(w.ctx.job_id, w.ctx.attempt)
            if p is None
            else repo.Beat(w.ctx.job_id, w.ctx.attempt, p.stage, p.done, p.total)
            for w, p in taken
        ]
        try:
            owned = repo.heartbeat(self.engine, beats)
        except Exception as exc:  # noqa: BLE001 (boundary: logged; a failed beat is retried next round)
            self._failed("heartbeat", exc)
            return
        self._failing_since.pop("heartbeat", None)
        for watch, progress in taken:
            ctx = watch.ctx
            ctx.progress_written(progress)
            if watch.stopped:  # its run is over (it may have ended meanwhile): nothing to tell it
                continue
            if ctx.job_id not in owned:
                logger.warning("job_id=%s was taken over by another delivery", ctx.job_id)
                watch.lost = True
                ctx.cancel()
            elif owned[ctx.job_id]:
                ctx.cancel()

    # --- the flag thread (Redis) ---------------------------------------------------------------------------

    def _flag_loop(self) -> None:
        while True:
            self._busy.wait()
            time.sleep(CANCEL_POLL)
            watches = self._current()
            for watch in watches:
                watch.ctx.flush_held()
            if not watches:
                continue
            try:
                flags = self.client.mget([cancel_key(w.ctx.job_id) for w in watches])
            except Exception as exc:  # noqa: BLE001 (boundary: logged; the DB flag is the truth meanwhile)
                self._failed("cancel check", exc)
                continue
            self._failing_since.pop("cancel check", None)
            for watch, flag in zip(watches, flags, strict=True):
                if flag is not None and not watch.stopped:
                    watch.ctx.cancel()

    def _failed(self, check: str, exc: Exception) -> None:
        """Log the first failure of a run of them, and then one line every ``FAILURE_LOG_EVERY`` seconds."""
        now = time.monotonic()
        since = self._failing_since.setdefault(check, now)
        jobs = ",".join(str(w.ctx.job_id) for w in self._current()[:5])
        if since == now:
            self._logged_at[check] = now
            logger.warning("job_ids=%s %s failed, retrying: %r", jobs, check, exc)
        elif now - self._logged_at.get(check, 0.0) >= FAILURE_LOG_EVERY:
            self._logged_at[check] = now
            logger.warning("job_ids=%s %s failing for %.0fs: %r", jobs, check, now - since, exc)


_watchers: dict[tuple[int, int, int, float], ProcessWatcher] = {}
_watchers_lock = threading.Lock()


def for_process(engine: Engine, client: redis.Redis, *, heartbeat_interval: float) -> ProcessWatcher:
    """The watcher of this process for these clients (a prefork child gets its own: threads do not survive a
    fork, and its clients are its own)."""
    key = (os.getpid(), id(engine), id(client), heartbeat_interval)
    with _watchers_lock:
        watcher = _watchers.get(key)
        if watcher is None:
            watcher = _watchers[key] = ProcessWatcher(engine, client, heartbeat_interval=heartbeat_interval)
        return watcher
