"""The parts of a sharded ingest in PostgreSQL (table ``ingest_parts``): planned by the job's own delivery,
claimed with a lease by any ingest child, finished with a result or a failure, deleted with the job's end.

A claim takes a part whose lease is free or has run out, and only while the job is ``running`` with no cancel
requested: a cancelled or ended job hands out no more parts. A child killed mid-part leaves its lease to run
out; the next claim takes the part again. Finishing is idempotent (a part's result depends only on the
document and the plan, so two children that both did it wrote the same thing).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, text
from sqlalchemy.dialects.postgresql import JSONB


@dataclass(frozen=True)
class Claimed:
    phase: str
    part: int
    spec: dict[str, Any]
    holder: str


@dataclass(frozen=True)
class State:
    total: int
    done: int
    size_done: int
    failure: tuple[str, str] | None  # (code, message) of the first failed part


def plan(
    engine: Engine, *, job_id: uuid.UUID, phase: str, specs: list[dict[str, Any]], start: int = 0, final: bool = True
) -> None:
    """Make parts ``start``, ``start + 1``, ... of the phase from ``specs``, keeping those a former delivery made
    with the same spec (done ones included); a part of another spec (other settings) is replaced, a failed
    one reset, to be tried again. ``final``: the phase has no more parts, those past these are deleted. A phase
    can so be planned a few parts at a time (the embed runs of a document still being parsed)."""
    if not specs and not final:
        return
    with engine.begin() as conn:
        if specs:
            upsert = text(
                """
                INSERT INTO ingest_parts (job_id, phase, part, spec) VALUES (:job, :phase, :part, :spec)
                ON CONFLICT (job_id, phase, part) DO UPDATE SET spec = excluded.spec, done = false, result = NULL,
                    size = 0, error_code = NULL, error_message = NULL, holder = NULL, lease_until = NULL
                WHERE ingest_parts.spec IS DISTINCT FROM excluded.spec OR ingest_parts.error_code IS NOT NULL
                """
            ).bindparams(bindparam("spec", type_=JSONB))
            conn.execute(
                upsert, [{"job": job_id, "phase": phase, "part": start + i, "spec": s} for i, s in enumerate(specs)]
            )
        if final:
            conn.execute(
                text("DELETE FROM ingest_parts WHERE job_id = :job AND phase = :phase AND part >= :end"),
                {"job": job_id, "phase": phase, "end": start + len(specs)},
            )


def claim(engine: Engine, *, job_id: uuid.UUID, lease: float) -> Claimed | None:
    """Take the job's next free part for ``lease`` seconds; None when none is free or the job is not running
    (ended, cancelled, cancel requested). Parse parts come before embed parts ("parse" > "embed"): the embed
    runs are cut from parsed pages, so a parse left for last would leave the other children nothing to do."""
    holder = uuid.uuid4().hex
    with engine.begin() as conn:
        row = conn.execute(
            text(
                """
                UPDATE ingest_parts p SET holder = :holder, lease_until = now() + make_interval(secs => :lease)
                FROM (
                    SELECT q.job_id, q.phase, q.part FROM ingest_parts q
                    JOIN jobs j ON j.id = q.job_id AND j.status = 'running' AND NOT j.cancel_requested
                    WHERE q.job_id = :job AND NOT q.done AND (q.lease_until IS NULL OR q.lease_until < now())
                    ORDER BY q.phase DESC, q.part LIMIT 1 FOR UPDATE OF q SKIP LOCKED
                ) free
                WHERE p.job_id = free.job_id AND p.phase = free.phase AND p.part = free.part
                RETURNING p.phase, p.part, p.spec
                """
            ),
            {"job": job_id, "holder": holder, "lease": lease},
        ).first()
    if row is None:
        return None
    return Claimed(phase=row.phase, part=row.part, spec=row.spec, holder=holder)


def renew(engine: Engine, claimed: Claimed, *, job_id: uuid.UUID, lease: float) -> bool:
    """Extend the lease; False when the part is no longer this holder's (or the job stopped: cancel, end)."""
    with engine.begin() as conn:
        row = conn.execute(
            text(
                """
                UPDATE ingest_parts p SET lease_until = now() + make_interval(secs => :lease)
                FROM jobs j
                WHERE p.job_id = :job AND p.phase = :phase AND p.part = :part AND p.holder = :holder
                  AND NOT p.done AND j.id = p.job_id AND j.status = 'running' AND NOT j.cancel_requested
                RETURNING p.part
                """
            ),
            {"job": job_id, "phase": claimed.phase, "part": claimed.part, "holder": claimed.holder, "lease": lease},
        ).first()
    return row is not None


def finish(
    engine: Engine,
    claimed: Claimed,
    *,
    job_id: uuid.UUID,
    result: bytes | None = None,
    size: int = 0,
    error: tuple[str, str] | None = None,
) -> None:
    """Record the part done, with its result or its failure (code, message); a part already done is kept."""
    code, message = error if error is not None else (None, None)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE ingest_parts SET done = true, result = :result, size = :size, error_code = :code, "
                "error_message = :message, holder = NULL, lease_until = NULL "
                "WHERE job_id = :job AND phase = :phase AND part = :part AND NOT done"
            ),
            {
                "job": job_id,
                "phase": claimed.phase,
                "part": claimed.part,
                "result": result,
                "size": size,
                "code": code,
                "message": message,
            },
        )


def state(engine: Engine, *, job_id: uuid.UUID, phase: str) -> State:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT part, done, size, error_code, error_message FROM ingest_parts "
                "WHERE job_id = :job AND phase = :phase ORDER BY part"
            ),
            {"job": job_id, "phase": phase},
        ).all()
    failure = next(((r.error_code, r.error_message) for r in rows if r.error_code is not None), None)
    return State(
        total=len(rows),
        done=sum(1 for r in rows if r.done),
        size_done=sum(r.size for r in rows if r.done),
        failure=failure,
    )


def results(engine: Engine, *, job_id: uuid.UUID, phase: str, first: int = 0) -> list[bytes]:
    """The results of the phase's parts from ``first`` on, in part order, up to the first one not done (or
    failed: the caller looks at :func:`state` for failures)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                """
                SELECT result FROM ingest_parts
                WHERE job_id = :job AND phase = :phase AND part >= :first AND part < coalesce((
                    SELECT min(part) FROM ingest_parts WHERE job_id = :job AND phase = :phase AND part >= :first
                    AND (NOT done OR error_code IS NOT NULL)
                ), 2147483647)
                ORDER BY part
                """
            ),
            {"job": job_id, "phase": phase, "first": first},
        ).all()
    return [bytes(r.result) for r in rows]


def in_flight(engine: Engine, *, job_id: uuid.UUID, phase: str) -> bool:
    """Whether the job is running (no cancel requested) with a part of the phase not done yet: a helper that
    found no free part waits for the parts it may bring."""
    with engine.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT EXISTS (SELECT 1 FROM ingest_parts p JOIN jobs j ON j.id = p.job_id "
                    "WHERE p.job_id = :job AND p.phase = :phase AND NOT p.done "
                    "AND j.status = 'running' AND NOT j.cancel_requested)"
                ),
                {"job": job_id, "phase": phase},
            ).scalar()
        )


def delete(conn: Connection, *, job_id: uuid.UUID) -> None:
    """In the caller's transaction (the one that stores the chunks): the job's parts are of no more use."""
    conn.execute(text("DELETE FROM ingest_parts WHERE job_id = :job"), {"job": job_id})


def object_key(engine: Engine, *, job_id: uuid.UUID) -> str | None:
    """The object key of the job's document; None when the job or the document is gone."""
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT d.object_key FROM jobs j JOIN documents d ON d.id = (j.payload->>'document_id')::uuid "
                "WHERE j.id = :job"
            ),
            {"job": job_id},
        ).scalar()


def sweep(engine: Engine) -> int:
    """Delete the parts of jobs that ended (a cancelled job's, left for a delivery that may own it now); the
    number of rows deleted. Beat's reconcile runs it."""
    with engine.begin() as conn:
        return conn.execute(
            text(
                "DELETE FROM ingest_parts p USING jobs j "
                "WHERE j.id = p.job_id AND j.status NOT IN ('queued', 'running')"
            )
        ).rowcount
