"""A document's status and error are its latest ingest job's, read through ``documents.job_id``.

The columns were written in four places and only the ingest worker's failure hook marked a document failed,
so a job that ended any other way (cancelled while queued, expired, its worker lost) left its document
``queued`` or ``processing`` forever. Read from the job row, which is the truth, they can never disagree.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_column("documents", "status")
    op.drop_column("documents", "error")


def downgrade() -> None:
    op.add_column("documents", sa.Column("error", sa.Text(), nullable=True))
    op.add_column("documents", sa.Column("status", sa.String(16), server_default="queued", nullable=False))
    op.execute(
        """
        UPDATE documents d SET
            status = CASE j.status WHEN 'running' THEN 'processing' WHEN 'succeeded' THEN 'ready'
                                   WHEN 'queued' THEN 'queued' ELSE 'failed' END,
            error = CASE WHEN j.status IN ('failed', 'cancelled') THEN j.error_message END
        FROM jobs j WHERE j.id = d.job_id
        """
    )
