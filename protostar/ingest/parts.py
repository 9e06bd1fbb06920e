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


def plan(engine: Engine, *, job_id: uuid.UUID, phase: str, specs: list[dict[str, Any]]) -> None:
    """Make the phase's parts, keeping those a former delivery made for the same plan (done ones included);
    a different plan (other settings) replaces them. Failed parts are reset, to be tried again."""
    with engine.begin() as conn:
        rows = conn.execute(
            text("SELECT spec FROM ingest_parts WHERE job_id = :job AND phase = :phase ORDER BY part FOR UPDATE"),
            {"job": job_id, "phase": phase},
        ).all()
        if [row.spec for row in rows] == specs:
            conn.execute(
                text(
                    "UPDATE ingest_parts SET done = false, error_code = NULL, error_message = NULL "
                    "WHERE job_id = :job AND phase = :phase AND error_code IS NOT NULL"
                ),
                {"job": job_id, "phase": phase},
            )
            return
        conn.execute(
            text("DELETE FROM ingest_parts WHERE job_id = :job AND phase = :phase"), {"job": job_id, "phase": phase}
        )
        insert = text(
            "INSERT INTO ingest_parts (job_id, phase, part, spec) VALUES (:job, :phase, :part, :spec)"
        ).bindparams(bindparam("spec", type_=JSONB))
        conn.execute(insert, [{"job": job_id, "phase": phase, "part": i, "spec": s} for i, s in enumerate(specs)])


def claim(engine: Engine, *, job_id: uuid.UUID, lease: float) -> Claimed | None:
    """Take the job's next free part for ``lease`` seconds; None when none is free or the job is not running
    (ended, cancelled, cancel requested)."""
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
                    ORDER BY q.phase, q.part LIMIT 1 FOR UPDATE OF q SKIP LOCKED
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


def results(engine: Engine, *, job_id: uuid.UUID, phase: str) -> list[bytes]:
    """The results of the phase's parts, in part order (all done, none failed: the caller checked)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT result FROM ingest_parts WHERE job_id = :job AND phase = :phase ORDER BY part"),
            {"job": job_id, "phase": phase},
        ).all()
    return [bytes(r.result) for r in rows]


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
