"""``protostar_submit_job``: a submit's database work in one statement (``jobs.turns.submit``).

It takes the tenant's turn lock on the queue (the same advisory lock as ``jobs.turns.lock``), counts the
tenant's open jobs there, refuses past the queued-jobs quota (nothing written) and inserts the job, sent or
waiting its turn, answering the admission. Called alone in autocommit, the lock, the count, the insert and the
commit are one round trip, and the lock is held only for the statement.

Why the count sees every concurrent submit: under READ COMMITTED a ``VOLATILE`` PL/pgSQL function takes a new
snapshot for each statement it runs, so the count, which runs after ``pg_advisory_xact_lock`` returned, sees
every transaction committed before the lock was ours (a transaction holding that lock releases it only after
its commit is visible). ``tests/jobs/test_submit_once.py`` checks exact caps under concurrent submits.

``p_async_commit``: the transaction commits without waiting for its WAL to reach the disk, so the lock is
released without an fsync inside it (on a shared disk an fsync's p90 was several ms, and every submit of the
tenant waited behind it). The caller then makes it durable before it sends or answers: any later transaction
committed synchronously flushes the WAL up to its own commit record, ours included (``jobs.turns.insert``
sends ``COMMIT; SELECT txid_current()`` after the call in the same message). Until then nothing was sent and
nobody was answered; a crash in between loses a job no one was told of.

Revision ID: 0014
Revises: 0012
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

SUBMIT = """
CREATE OR REPLACE FUNCTION protostar_submit_job(
    p_id uuid, p_tenant uuid, p_kind text, p_task text, p_queue text, p_payload jsonb,
    p_cap integer, p_max_queued integer, p_async_commit boolean DEFAULT false
) RETURNS TABLE (admitted boolean, sent boolean, in_flight integer, queued integer, created_at timestamptz)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    v_in_flight integer;
    v_queued integer;
    v_send boolean;
    v_created timestamptz;
BEGIN
    IF p_async_commit THEN  -- the caller makes the commit durable itself, after the lock is released
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('turns:' || p_tenant::text || ':' || p_queue, 0));
    -- a statement of its own, after the lock: a fresh snapshot (see the migration's docstring)
    SELECT count(*) FILTER (WHERE j.status = 'running' OR j.dispatched_at IS NOT NULL),
           count(*) FILTER (WHERE j.status = 'queued')
      INTO v_in_flight, v_queued
      FROM jobs j
     WHERE j.tenant_id = p_tenant AND j.queue = p_queue AND j.status IN ('queued', 'running');
    IF p_max_queued IS NOT NULL AND v_queued >= p_max_queued THEN
        RETURN QUERY SELECT false, false, v_in_flight, v_queued, NULL::timestamptz;
        RETURN;
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


def upgrade() -> None:
    op.execute(SUBMIT)


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION IF EXISTS protostar_submit_job(uuid, uuid, text, text, text, jsonb, integer, integer, boolean)"
    )
