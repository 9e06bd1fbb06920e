"""Phase 3: celery beat at 1,000 stale sessions. The sessions are written straight to the database, as chat
answers older than ``PROTOSTAR_SUMMARY_STALE_AFTER`` would have left them; then the real ``protostar beat``
process runs its crontab (a tick a minute, ``PROTOSTAR_SUMMARY_BATCH`` sessions per tick) and the summary
worker works the jobs off. Baseline: the same folds called directly from as many threads as the summary
worker has (``PROTOSTAR_SUMMARY_CONCURRENCY``), for the same LLM."""

from __future__ import annotations

import random
import statistics
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from bench.harness import System
from bench.llm import Direct
from bench.summary import conversation
from bench.summary.session import run_fold

ANSWERS = [
    "Write down what you need, compare three offers, and ask about fees, the rate over time and early repayment.",
    "Add up ingredients, labour and a share of rent per piece, then set a price that leaves a margin of 60%.",
    "Bake smaller batches late in the day, sell leftovers at a discount at closing and donate the rest.",
    "Rotate early shifts fairly, publish the rota two weeks ahead and keep one person on call.",
    "Pair them with an experienced baker, teach one product at a time and review progress every week.",
    "Sales, waste, hours worked and the cost of flour and butter: compare each week with the last.",
]
TENANTS = 10
TURNS = 3  # question/answer pairs per stale session


@dataclass
class BeatRun:
    sessions: int
    window: float  # seconds measured, from beat's first summary job
    queued: int = 0  # summary jobs of the stale sessions created in the window
    finished: int = 0  # ... that ended (any status) in the window
    failed: int = 0
    per_tick: list[int] = field(default_factory=list)  # jobs queued at each tick
    durations: list[float] = field(default_factory=list)  # started -> finished, jobs ended in the window
    waits: list[float] = field(default_factory=list)  # created -> started
    scan_ms: list[float] = field(default_factory=list)  # repo.stale_sessions at the batch size
    tokens: int = 0  # completion tokens of the jobs that finished in the window
    direct_folds: int = 0
    direct_tokens: int = 0
    direct_seconds: float = 0.0
    summarized_twice: int = 0


def seed(system: System, sessions: int, age_seconds: float) -> list[uuid.UUID]:
    """``sessions`` sessions over :data:`TENANTS` tenants, :data:`TURNS` answered questions each, all
    ``age_seconds`` old; their ids."""
    rng = random.Random(11)
    tenants = [system.tenant_key(f"bench-stale-{n}")[1] for n in range(TENANTS)]
    ids = [uuid.uuid4() for _ in range(sessions)]
    questions = [t.text for t in conversation.turns(len(conversation.QUESTIONS))]
    session_rows, message_rows = [], []
    for n, session_id in enumerate(ids):
        tenant = tenants[n % TENANTS]
        session_rows.append({"id": session_id, "tid": tenant, "age": age_seconds})
        for _ in range(TURNS):
            question = uuid.uuid4()
            message_rows.append(
                {
                    "id": question,
                    "sid": session_id,
                    "tid": tenant,
                    "role": "user",
                    "content": rng.choice(questions),
                    "reply_to": None,
                    "age": age_seconds,
                }
            )
            message_rows.append(
                {
                    "id": uuid.uuid4(),
                    "sid": session_id,
                    "tid": tenant,
                    "role": "assistant",
                    "content": rng.choice(ANSWERS),
                    "reply_to": question,
                    "age": age_seconds,
                }
            )
    with system.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO sessions (id, tenant_id, created_at, updated_at) "
                "VALUES (:id, :tid, now() - make_interval(secs => :age), now() - make_interval(secs => :age))"
            ),
            session_rows,
        )
        conn.execute(
            text(
                "INSERT INTO messages (id, session_id, tenant_id, role, content, status, reply_to, created_at) "
                "VALUES (:id, :sid, :tid, :role, :content, 'complete', :reply_to, now() - make_interval(secs => :age))"
            ),
            message_rows,
        )
    return ids


def scan(system: System, reps: int) -> list[float]:
    """Milliseconds of the query each beat tick runs first (no jobs queued: it only reads)."""
    from sqlalchemy.orm import Session

    from protostar.summary.repo import stale_sessions

    settings, times = system.settings, []
    with Session(system.engine) as session:
        for _ in range(reps):
            started = time.perf_counter()
            found = stale_sessions(session, stale_after=settings.summary_stale_after, limit=settings.summary_batch)
            times.append((time.perf_counter() - started) * 1000)
            session.rollback()
    if not found:
        raise RuntimeError("the stale-session scan found nothing: the seeded sessions are not stale")
    return times


def direct_folds(
    system: System, direct_url: tuple[str, str, str], ids: list[uuid.UUID], seconds: float
) -> tuple[int, int, float]:
    """Folds of seeded sessions called straight to llama-server from ``summary_concurrency`` threads for
    ``seconds`` (each thread its own HTTP client); (folds finished, their completion tokens, seconds taken)."""
    from protostar.summary import fold
    from protostar.summary.pipeline import session_pieces
    from protostar.summary.repo import unsummarized

    settings = system.settings
    pieces: list[list[str]] = []
    with system.engine.connect() as conn:
        for session_id in ids[-50:]:
            pieces.append(session_pieces(None, unsummarized(conn, session_id=session_id, after_seq=0)))
    done, tokens, lock = [0], [0], threading.Lock()
    stop = time.monotonic() + seconds

    def worker(offset: int) -> None:
        client = Direct(*direct_url)
        n = offset
        try:
            while time.monotonic() < stop:
                folded = run_fold(client, settings, pieces[n % len(pieces)], fold.SESSION)
                n += settings.summary_concurrency
                with lock:
                    done[0] += 1
                    tokens[0] += folded.completion_tokens
        finally:
            client.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(settings.summary_concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done[0], tokens[0], time.perf_counter() - started


def run(system: System, direct_url: tuple[str, str, str], sessions: int, minutes: float, baseline: float) -> BeatRun:
    from protostar import commands

    settings = system.settings
    ids = seed(system, sessions, age_seconds=settings.summary_stale_after * 2)
    result = BeatRun(sessions=sessions, window=minutes * 60)
    result.scan_ms = scan(system, 20)
    print(
        f"    {sessions} stale sessions seeded; stale scan p50 {statistics.median(result.scan_ms):.1f} ms", flush=True
    )
    print(f"    baseline: the same folds called directly for {baseline:.0f} s...", flush=True)
    result.direct_folds, result.direct_tokens, result.direct_seconds = direct_folds(system, direct_url, ids, baseline)
    print("    starting beat; waiting for its first tick...", flush=True)
    system.supervisor.start("beat", commands.beat(settings))
    first = wait_first_job(system, timeout=150)
    print(f"    first tick; measuring {minutes:g} minutes...", flush=True)
    time.sleep(max(0.0, first + result.window - db_now(system)))
    system.stop("beat")
    collect(system, result, first)
    return result


def db_now(system: System) -> float:
    with system.engine.connect() as conn:
        return float(conn.exec_driver_sql("SELECT extract(epoch FROM clock_timestamp())").scalar_one())


STALE = {"stale": "bench-stale-%"}  # the seeded sessions' tenants
STALE_JOBS = (
    "SELECT j.created_at, j.started_at, j.finished_at, j.status, "
    "coalesce((j.result->'usage'->>'completion_tokens')::int, 0) FROM jobs j JOIN tenants t ON t.id = j.tenant_id "
    "WHERE j.kind = 'summary_session' AND t.name LIKE :stale"
)


def wait_first_job(system: System, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with system.engine.connect() as conn:
            first = conn.execute(
                text(f"SELECT extract(epoch FROM min(created_at)) FROM ({STALE_JOBS}) j"), STALE
            ).scalar()
        if first is not None:
            return float(first)
        time.sleep(0.5)
    raise RuntimeError(f"beat queued no summary job within {timeout:.0f} s")


def collect(system: System, result: BeatRun, first: float) -> None:
    end = first + result.window
    with system.engine.connect() as conn:
        rows: list[Any] = conn.execute(text(STALE_JOBS), STALE).all()
        twice = conn.execute(
            text(
                "SELECT count(*) FROM (SELECT session_id FROM summaries s JOIN tenants t ON t.id = s.tenant_id "
                "WHERE t.name LIKE :stale GROUP BY session_id HAVING count(*) > 1) x"
            ),
            STALE,
        ).scalar_one()
    result.summarized_twice = int(twice)
    ticks: dict[int, int] = {}
    for created, started, finished, status, tokens in rows:
        c = created.timestamp()
        if c <= end:
            result.queued += 1
            ticks[int((c - first) // 60)] = ticks.get(int((c - first) // 60), 0) + 1
        if started is not None:
            result.waits.append(started.timestamp() - c)
        if finished is not None and first <= finished.timestamp() <= end:
            result.finished += 1
            result.failed += status != "succeeded"
            result.tokens += tokens
            if started is not None:
                result.durations.append(finished.timestamp() - started.timestamp())
    result.per_tick = [ticks[k] for k in sorted(ticks)]
