"""Fair turns between tenants: an index on each tenant's open jobs per queue.

Every submit counts its tenant's jobs in flight and queued on the job's queue, and every job's end picks the
tenant's oldest job waiting for its turn there (``protostar.jobs.turns``): both read this index, whose size is
the open jobs, not the history.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_jobs_tenant_open",
        "jobs",
        ["tenant_id", "queue", "created_at"],
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_open", table_name="jobs")
