"""The job shell: what every task does around its pipeline.

claim the row (one ``UPDATE … RETURNING``) → publish ``running`` → have the process's watcher beat it, write
its progress and watch for cancel and its deadline (``jobs.watcher``: two threads per process, not per job) →
run the pipeline → record success or failure with a reason (``jobs.repo.finish``, one statement that also
writes the usage count and the webhook outbox) → publish the closing events → send the webhook deliveries the
ending made, and the tenant's next job waiting its turn on the queue, each only when there is one. A job that finds
no turn at the LLM (``LLMBusy``) goes back to its queue and gives its thread back (``_wait_for_turn``).
Pipelines are plain functions of a :class:`~protostar.jobs.context.JobContext` and their collaborators; only
this module and the task modules know Celery.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from protostar import backoff
from protostar.bundle import Clients
from protostar.constants import EventType, JobStatus, Queue
from protostar.errors import Cancelled, LLMBusy, OutOfMemory, ProtostarError, TimeLimitExceeded, Transient
from protostar.jobs import faults, repo
from protostar.jobs.context import JobContext
from protostar.jobs.dispatch import BROKER_ERRORS
from protostar.jobs.ending import Ending
from protostar.jobs.watcher import for_process
from protostar.llm.limits import MIN_RETRY_IN
from protostar.settings import Settings
from protostar.worker.limits import describe as _limit_text

logger = logging.getLogger(__name__)

Pipeline = Callable[[JobContext], dict[str, Any]]

CLAIM_RETRIES = 20  # deliveries that found PostgreSQL down before claiming (backoff capped at 30 s: ~8 min)
RETRIES_HEADER = "protostar_retries"  # the message's sends again, counted per reason (see ``_send_again``)
END_TRIES = 3  # tries to record a job's end while PostgreSQL is unavailable, before leaving it to recovery
WAITED_HEADER = "protostar_llm_waited"  # seconds the job was sent again for, waiting for turns at the LLM
TURN_SPREAD_CAP = 30.0  # longest jitter added to a wait for a turn (it grows with the waits, see ``_wait_for_turn``)


def run_job(task: Task, clients: Clients, job_id: str, pipeline: Pipeline) -> dict[str, Any] | None:
    """Run ``pipeline`` for one delivery of ``job_id``. Safe to call again for the same job. However it ends,
    the tenant's next job waiting its turn on this queue is sent (``jobs.turns``), and the webhook deliveries of
    its end (written with it) are sent to the ``webhooks`` queue; each only when there is one (the ending says)."""
    job = _claim(task, clients, uuid.UUID(job_id))
    if job is None:
        return None
    return _run_claimed(task, clients, job, pipeline)


@dataclass(frozen=True)
class _Run:
    """One delivery's run of a claimed job."""

    clients: Clients
    job: repo.Claimed
    ctx: JobContext


def _next_turn(run: _Run) -> None:
    """The job's end is committed: send its tenant's next jobs waiting their turn on its queue, if any
    (``Dispatcher.next_turn``: one statement, then the sends). Not done here (PostgreSQL or the broker away):
    the reconciler's next run does it."""
    job = run.job
    try:
        run.clients.dispatcher.next_turn(tenant_id=job.tenant_id, queue=job.queue)
    except Exception as exc:
        if (name := faults.dependency(exc)) is None:
            raise
        logger.warning("job_id=%s the next turn was not taken, %s unavailable: left to the reconciler", job.id, name)


def _send_deliveries(clients: Clients, job_id: uuid.UUID, ids: list[uuid.UUID]) -> None:
    try:
        clients.dispatcher.send_deliveries(ids)
    except Exception as exc:  # boundary: a job's end never fails on its webhooks
        if faults.dependency(exc) is None and not isinstance(exc, BROKER_ERRORS):
            raise
        logger.warning("job_id=%s webhook deliveries not sent now (the reconciler will): %s", job_id, exc)


def _ended_elsewhere(clients: Clients, job_id: uuid.UUID, tenant_id: uuid.UUID | None, queue: str | None) -> None:
    """The claim ended the job (a cancel while queued, a worker lost on every attempt): its webhook deliveries
    and its tenant's next turn, as after any ending."""
    clients.dispatcher.send_webhooks(job_id=job_id)
    if tenant_id is None or queue is None:
        return
    try:
        clients.dispatcher.next_turn(tenant_id=tenant_id, queue=queue)
    except Exception as exc:
        if (name := faults.dependency(exc)) is None:
            raise
        logger.warning("job_id=%s the next turn was not taken, %s unavailable: left to the reconciler", job_id, name)


def _run_claimed(task: Task, clients: Clients, job: repo.Claimed, pipeline: Pipeline) -> dict[str, Any] | None:
    jid = job.id
    settings = clients.settings
    ctx = JobContext(
        job_id=jid,
        tenant_id=job.tenant_id,
        attempt=job.attempts,
        payload=job.payload,
        engine=clients.engine,
        events=clients.events,
        deadline=time.monotonic() + _soft_limit(task, settings, job.queue),
    )
    run = _Run(clients, job, ctx)
    # Sent with the pipeline's first event, in one round trip (or by the watcher within its poll).
    ctx.hold(EventType.STATUS, {"status": JobStatus.RUNNING.value, "attempt": job.attempts})
    logger.info("job_id=%s kind=%s attempt=%d started", jid, job.kind, job.attempts)
    watcher = for_process(clients.engine, clients.redis, heartbeat_interval=settings.heartbeat_interval)
    watch = ctx.watched_by(watcher)
    try:
        result = _run(pipeline, ctx)
    except TimeLimitExceeded as exc:
        _end(run, _failure(JobStatus.FAILED, exc))
        return None
    except Cancelled as exc:
        if not watch.lost:
            _end(run, _failure(JobStatus.CANCELLED, exc))
        return None
    except SoftTimeLimitExceeded:
        _end(run, Ending(JobStatus.FAILED, "time_limit", "time limit exceeded"))
        raise
    except MemoryError:
        # The process hit its address-space limit (an ingest child's RLIMIT_AS): the input asked for more than a
        # worker may use. The allocation that failed is unwound by now, so the process carries on.
        error = OutOfMemory(f"the job needed more memory than a worker may use ({_limit_text()})")
        _end(run, _failure(JobStatus.FAILED, error))
        raise error from None  # Celery re-raises a MemoryError itself, which would take the child down
    except LLMBusy as exc:
        if ctx.cancelled.is_set():  # the cancel came while it asked for a turn
            if not watch.lost:
                _end(run, _failure(JobStatus.CANCELLED, ctx.stopped_error()))
            return None
        _wait_for_turn(task, run, settings, exc)
        return None
    except Exception as exc:  # boundary: record the failure on the job (or retry it), then let Celery see it
        transient = faults.as_transient(exc)
        if transient is not None:
            _retry(task, run, settings, transient, cause=exc)
        _end(run, _failure(JobStatus.FAILED, exc, job_id=jid))
        raise
    _end(run, Ending(JobStatus.SUCCEEDED, result=result))
    return result


def _run(pipeline: Pipeline, ctx: JobContext) -> dict[str, Any]:
    """The pipeline, watched until it returns or raises; past its deadline, whatever the stop made it raise (a
    cancel, a closed stream) is the time limit's doing."""
    try:
        return pipeline(ctx)
    except Exception as exc:
        if ctx.timed_out and not isinstance(exc, TimeLimitExceeded):
            raise ctx.stopped_error() from exc
        raise
    finally:
        ctx.unwatch()


def _claim(task: Task, clients: Clients, job_id: uuid.UUID) -> repo.Claimed | None:
    """Take the job for this delivery; ``None`` when it is not to run (finished, cancelled, gone)."""
    settings = clients.settings
    try:
        claim = repo.claim(
            clients.engine,
            job_id=job_id,
            worker=clients.worker_name,
            takeover_after=settings.takeover_after,
            max_attempts=settings.max_attempts,
        )
    except Exception as exc:
        if (name := faults.dependency(exc)) is None:
            raise
        # Nothing is recorded yet (no attempt spent): deliver the message again later, with backoff. Past the cap
        # the row (queued, or running with a stale heartbeat) is the reconciler's to send again.
        delay = backoff.delay(_retried(task, "claim"), base=1.0, cap=30.0)
        logger.warning("job_id=%s not claimed, %s unavailable; delivered again in %.1fs", job_id, name, delay)
        _send_again(task, "claim", countdown=delay, cap=CLAIM_RETRIES)
        return None
    if claim.reason == "busy":
        # Another delivery holds a fresh heartbeat. Look again once it would be stale; once the reconciler would
        # have re-queued a silent holder, this delivery is a duplicate and ends.
        logger.info("job_id=%s is running elsewhere; checking again in %.0f s", job_id, claim.retry_in)
        cap = int(settings.reap_after / settings.takeover_after) + 2
        _send_again(task, "busy", countdown=claim.retry_in or settings.takeover_after, cap=cap)
        return None
    if claim.reason == "cancelled":  # cancelled while it was queued to run again (a retry, a wait for a turn)
        ending = Ending(JobStatus.CANCELLED, "cancelled", "cancelled while it waited to run again")
        with clients.engine.begin() as conn:
            ended = repo.finish(conn, job_id=job_id, ending=ending, only_from=(JobStatus.QUEUED,))
        if ended:
            logger.info("job_id=%s ended cancelled before its next run", job_id)
            clients.events.publish_many(job_id, ending.events())
            _ended_elsewhere(clients, job_id, claim.tenant_id, claim.queue)
        return None
    if claim.reason == "worker_lost" and claim.ending is not None:  # its worker died on every attempt
        logger.warning("job_id=%s ended: %s", job_id, claim.ending.message)
        clients.events.publish_many(job_id, claim.ending.events())
        _ended_elsewhere(clients, job_id, claim.tenant_id, claim.queue)
        return None
    if claim.job is None or claim.reason != "claimed":
        logger.info("job_id=%s not run: %s", job_id, claim.reason)
        return None
    return claim.job


def _soft_limit(task: Task, settings: Settings, queue: str) -> float:
    """Seconds the job may run: the soft time limit its message carries (``jobs.kinds.send_options``), else its
    queue's. The worker's watcher enforces it on every pool (Celery's thread pool ignores time limits)."""
    request = getattr(task, "request", None)  # no task: the shell called directly (tests)
    _, soft = getattr(request, "timelimit", None) or (None, None)
    if soft:
        return float(soft)
    return float(settings.time_limits[Queue(queue)][0])


def _failure(status: JobStatus, error: BaseException, *, job_id: uuid.UUID | None = None) -> Ending:
    """How the job ends. A typed error's message is written for callers and kept; anything else may carry SQL,
    object keys or internal URLs, so the job says only "internal error" with an id that the log line carries
    together with the whole exception."""
    if isinstance(error, ProtostarError):
        return Ending(status, error.code, error.message)
    error_id = uuid.uuid4().hex[:12]
    logger.error("job_id=%s error_id=%s failed: %r", job_id, error_id, error, exc_info=error)
    return Ending(status, "internal", f"internal error (error id {error_id}); the details are in the worker log")


def _retry(task: Task, run: _Run, settings: Settings, error: Transient, *, cause: Exception) -> NoReturn:
    """A transient failure: put the job back to ``queued`` (giving this delivery's attempt back) and send it again
    after a backoff, up to ``transient_retries`` times (counted on the message); then it fails with the
    transient reason. When even that cannot be recorded (PostgreSQL is down), the row stays ``running``: its
    heartbeat goes stale, and the retry (or the reconciler) takes it over."""
    ctx = run.ctx
    retries = _retried(task, "transient")
    if retries >= settings.transient_retries:
        _end(run, _failure(JobStatus.FAILED, error))
        raise error from cause
    if not _back_to_queue(ctx, stage="retrying"):
        raise error from cause
    delay = backoff.delay(retries + 1, base=1.0, cap=30.0)
    logger.warning(
        "job_id=%s transient failure (%s), retry in %.1fs: %s", ctx.job_id, type(cause).__name__, delay, error.message
    )
    ctx.emit(EventType.STATUS, {"status": JobStatus.QUEUED.value, "retry_in": round(delay, 1), "reason": error.message})
    _send_again(task, "transient", countdown=delay, cap=settings.transient_retries, cause=cause)
    raise error from cause  # not reached: the cap is checked above


def _back_to_queue(ctx: JobContext, *, stage: str) -> bool:
    """Put the job back to ``queued`` with ``stage`` (its attempt given back) before it is sent again; ``False``
    when another delivery owns it now (this one must not send it again). When PostgreSQL is unavailable the row
    stays ``running``: its heartbeat goes stale, and the message sent again (or the reconciler) takes it over."""
    try:
        released = repo.release(ctx.engine, job_id=ctx.job_id, attempt=ctx.attempt, stage=stage)
    except Exception as exc:
        if (name := faults.dependency(exc)) is None:
            raise
        logger.warning("job_id=%s %s not recorded, %s unavailable: left running for takeover", ctx.job_id, stage, name)
        return True
    if not released:
        logger.warning("job_id=%s back to its queue (%s) but another delivery owns it now", ctx.job_id, stage)
    return released


def _wait_for_turn(task: Task, run: _Run, settings: Settings, busy: LLMBusy) -> None:
    """No turn at the LLM now: give the worker thread back. The job goes back to ``queued`` (its attempt given
    back) and is sent again in about ``busy.retry_in`` seconds, jittered over a spread that grows with the waits
    so that jobs turned away together do not come back together. Its followers get a ``status`` event saying
    why and for how long. The waits of one job add up to at most ``llm_max_wait`` seconds; past that it fails
    ``llm_busy``. Work done before the wait is not lost: a summary keeps its finished parts (``summary.parts``)."""
    ctx = run.ctx
    waited, countdown = _turn_wait(task, busy)
    if waited + countdown > settings.llm_max_wait:
        error = LLMBusy(
            f"no turn at the LLM within {settings.llm_max_wait:.0f} s of waiting (limit: {busy.limit}); the limits "
            "are PROTOSTAR_LLM_*CONCURRENCY and PROTOSTAR_LLM_*RPM, the wait PROTOSTAR_LLM_MAX_WAIT",
            retry_in=busy.retry_in,
            limit=busy.limit,
        )
        _end(run, _failure(JobStatus.FAILED, error))
        raise error from busy
    if not _back_to_queue(ctx, stage="waiting_for_llm"):
        return
    logger.info("job_id=%s no LLM turn (%s): sent again in %.1f s", ctx.job_id, busy.limit, countdown)
    ctx.emit(
        EventType.STATUS, {"status": JobStatus.QUEUED.value, "retry_in": round(countdown, 1), "reason": busy.message}
    )
    # A backstop only: the seconds are the budget, and no countdown is below MIN_RETRY_IN.
    cap = int(settings.llm_max_wait / MIN_RETRY_IN) + 1
    _send_again(task, "throttled", countdown=countdown, cap=cap, cause=busy, carry={WAITED_HEADER: waited + countdown})


def _turn_wait(task: Task, busy: LLMBusy) -> tuple[float, float]:
    """The seconds this job was sent again for so far to wait for turns, and the countdown of the next wait:
    ``busy.retry_in`` plus a jitter whose ceiling doubles with each wait (1 s, 2 s, … ``TURN_SPREAD_CAP``)."""
    waited = float((getattr(task.request, "headers", None) or {}).get(WAITED_HEADER) or 0.0)
    return waited, busy.retry_in + backoff.delay(_retried(task, "throttled"), base=1.0, cap=TURN_SPREAD_CAP)


def _retried(task: Task, reason: str) -> int:
    """How many times this job's message was sent again for ``reason``."""
    headers = getattr(task.request, "headers", None) or {}
    return int((headers.get(RETRIES_HEADER) or {}).get(reason, 0))


def _send_again(
    task: Task,
    reason: str,
    *,
    countdown: float,
    cap: int,
    cause: BaseException | None = None,
    carry: dict[str, Any] | None = None,
) -> None:
    """Send the job's message again in ``countdown`` seconds (raising Celery's ``Retry``), unless it was already
    sent again ``cap`` times for ``reason``; then return.

    Each reason has its own count, carried in a message header: a delivery that waited for PostgreSQL at claim
    ("claim"), for another delivery's fresh heartbeat ("busy"), after a dependency failed under the job
    ("transient") or for a turn at the LLM ("throttled"). Celery's one ``retries`` count mixed them: three waits
    for PostgreSQL used up the budget of a later takeover, and the message was dropped with the job left
    ``running``. ``carry``: more headers for the next delivery (the seconds waited for turns at the LLM)."""
    headers = dict(getattr(task.request, "headers", None) or {})
    counts = dict(headers.get(RETRIES_HEADER) or {})
    sent = int(counts.get(reason, 0))
    if sent >= cap:
        logger.warning("job_id=%s sent again %d times (%s): left to the reconciler", task.request.id, sent, reason)
        return
    counts[reason] = sent + 1
    headers[RETRIES_HEADER] = counts
    headers.update(carry or {})
    # The caps are ours; Celery's own (checked against its total count) must never drop the message.
    raise task.retry(countdown=countdown, max_retries=(task.request.retries or 0) + 1, headers=headers) from cause


def _end(run: _Run, ending: Ending) -> None:
    """Record the end if this delivery still owns the job (one statement, ``jobs.repo.finish``), tell the job's
    followers, then send its webhook deliveries and its tenant's next turn, when there are some."""
    ended = _record_end(run, ending)
    if ended is None:
        return
    if ended.deliveries:
        _send_deliveries(run.clients, run.job.id, ended.deliveries)
    _next_turn(run)


def _record_end(run: _Run, ending: Ending) -> repo.Finished | None:
    """The end recorded and published; None when
    another delivery owns the job now, or when PostgreSQL stays unavailable: the write is tried ``END_TRIES``
    times, then the row is left ``running``, so that its stale heartbeat makes recovery run the job again (a re-run
    is idempotent), rather than the job never ending."""
    ctx = run.ctx
    for attempt in range(1, END_TRIES + 1):
        try:
            with repo.autocommit(ctx.engine) as conn:
                progress = ctx.pending_progress
                ended = repo.finish(
                    conn, job_id=ctx.job_id, ending=ending, attempt=ctx.attempt, job=run.job, progress=progress
                )
                if ended is None:
                    status = ending.status.value
                    logger.warning("job_id=%s ended %s but another delivery owns it now", ctx.job_id, status)
                    return None
                logger.info(
                    "job_id=%s ended %s code=%s message=%s",
                    ctx.job_id,
                    ending.status.value,
                    ending.code,
                    ending.message,
                )
                ctx.publish(ending.events())
                return ended
        except Exception as exc:
            if (name := faults.dependency(exc)) is None:
                raise
            if attempt == END_TRIES:
                logger.error(
                    "job_id=%s ended %s but %s is unavailable: left running for recovery",
                    ctx.job_id,
                    ending.status.value,
                    name,
                )
                return None
            time.sleep(backoff.delay(attempt, base=0.5, cap=5.0))
    return None  # pragma: no cover (the last attempt returns)
