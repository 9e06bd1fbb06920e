"""Fair turns that cost the same with 3 or 3,000 jobs waiting: two partial indexes and ``protostar_take_turn``.

Both a submit (``protostar_submit_job``) and a turn's take counted the tenant's jobs in flight on the queue by
reading every open job of the tenant there, its whole backlog of jobs waiting their turn included: one tenant's
thousands of waiting jobs made each of its submits and each of its jobs' endings read them all.

- ``ix_jobs_in_flight`` holds only jobs in flight (sent and not ended), so counting them reads at most the
  tenant's cap of rows; ``ix_jobs_waiting`` holds only the jobs waiting their turn, oldest first, so a take finds
  the next ones without stepping over the jobs in flight.
- ``protostar_submit_job`` counts the queued jobs (waiting or sent, not started) only up to the quota it
  checks (``LIMIT p_max_queued``): the refusal needs no more, and with no quota it does not count them.
- ``protostar_take_turn`` is ``jobs.turns.take`` in one statement: the tenant's turn lock, the count (a
  statement of its own after the lock: a fresh snapshot, as in migration 0014), and the ``UPDATE`` that marks
  the oldest waiting jobs sent, as many as fit under the cap. On an autocommit connection it is one round trip;
  in a transaction the lock is held until that ends.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-29
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


# Sent and not ended: the predicate of ``ix_jobs_in_flight``, which the counts below repeat so as to use it.
IN_FLIGHT = "status = 'running' OR (status = 'queued' AND dispatched_at IS NOT NULL)"


WAITING = "status = 'queued' AND dispatched_at IS NULL"

SUBMIT = """
CREATE OR REPLACE FUNCTION protostar_submit_job(
    p_id uuid, p_tenant uuid, p_kind text, p_task text, p_queue text, p_payload jsonb,
    p_cap integer, p_max_queued integer, p_async_commit boolean DEFAULT false
) RETURNS TABLE (admitted boolean, sent boolean, in_flight integer, queued integer, created_at timestamptz)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    v_in_flight integer;
    v_queued integer := 0;
    v_send boolean;
    v_created timestamptz;
BEGIN
    IF p_async_commit THEN  -- the caller makes the commit durable itself, after the lock is released
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('turns:' || p_tenant::text || ':' || p_queue, 0));
    -- statements of their own, after the lock: fresh snapshots (see migration 0014)
    SELECT count(*) INTO v_in_flight FROM jobs j
     WHERE j.tenant_id = p_tenant AND j.queue = p_queue
       AND (j.status = 'running' OR (j.status = 'queued' AND j.dispatched_at IS NOT NULL));
    IF p_max_queued IS NOT NULL THEN
        SELECT count(*) INTO v_queued FROM (
            SELECT 1 FROM jobs j WHERE j.tenant_id = p_tenant AND j.queue = p_queue AND j.status = 'queued'
            LIMIT p_max_queued
        ) q;
        IF v_queued >= p_max_queued THEN
            RETURN QUERY SELECT false, false, v_in_flight, v_queued, NULL::timestamptz;
            RETURN;
        END IF;
    END IF;
    v_send := v_in_flight < p_cap;
    INSERT INTO jobs (id, tenant_id, kind, task_name, queue, payload, status, stage, progress_done, attempts,
                      cancel_requested, dispatched_at)
    VALUES (p_id, p_tenant, p_kind, p_task, p_queue, p_payload, 'queued',
            CASE WHEN v_send THEN NULL ELSE 'waiting_turn' END, 0, 0, false,
            CASE WHEN v_send THEN now() END)
    RETURNING jobs.created_at INTO v_created;
    RETURN QUERY SELECT true, v_send, v_in_flight, v_queued, v_created;
END
$$
"""

TAKE = """
CREATE OR REPLACE FUNCTION protostar_take_turn(p_tenant uuid, p_queue text, p_cap integer)
RETURNS TABLE (id uuid, task_name text, queue text)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    v_free integer;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('turns:' || p_tenant::text || ':' || p_queue, 0));
    SELECT p_cap - count(*) INTO v_free FROM jobs j
     WHERE j.tenant_id = p_tenant AND j.queue = p_queue
       AND (j.status = 'running' OR (j.status = 'queued' AND j.dispatched_at IS NOT NULL));
    IF v_free IS NULL OR v_free <= 0 THEN  -- no cap given sends nothing (LIMIT NULL would send them all)
        RETURN;
    END IF;
    RETURN QUERY
    WITH picked AS (
        SELECT w.id FROM jobs w
         WHERE w.tenant_id = p_tenant AND w.queue = p_queue AND w.status = 'queued' AND w.dispatched_at IS NULL
         ORDER BY w.created_at
         LIMIT v_free
         FOR UPDATE SKIP LOCKED
    ), sent AS (
        UPDATE jobs u SET dispatched_at = now(), stage = NULL
          FROM picked
         WHERE u.id = picked.id AND u.status = 'queued' AND u.dispatched_at IS NULL
        RETURNING u.id, u.task_name::text, u.queue::text, u.created_at
    )
    SELECT s.id, s.task_name, s.queue FROM sent s ORDER BY s.created_at;
END
$$
"""


def upgrade() -> None:
    # Built without blocking the writes of a running install (submits, endings, heartbeats) meanwhile.
    with op.get_context().autocommit_block():
        for name, columns, where in (
            ("ix_jobs_in_flight", "tenant_id, queue", IN_FLIGHT),
            ("ix_jobs_waiting", "tenant_id, queue, created_at", WAITING),
        ):
            op.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON jobs ({columns}) WHERE {where}")
    op.execute(SUBMIT)
    op.execute(TAKE)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS protostar_take_turn(uuid, text, integer)")
    op.execute("DROP INDEX IF EXISTS ix_jobs_waiting")
    op.execute("DROP INDEX IF EXISTS ix_jobs_in_flight")
    op.execute(_previous_submit())


def _previous_submit() -> str:
    """Migration 0014's ``protostar_submit_job``."""
    path = Path(__file__).with_name("0014_submit_job.py")
    spec = importlib.util.spec_from_file_location("protostar_migration_0014", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.SUBMIT)
