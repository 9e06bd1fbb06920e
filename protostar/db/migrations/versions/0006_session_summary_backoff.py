"""A session's summary tries: beat backs off a session whose summary keeps failing.

``summary_tries`` counts the summaries beat queued for the session since one last succeeded;
``summary_retry_at`` is when beat may queue the next (exponential in the tries, capped). Counting at queue
time covers every way a try can end without a summary (failed, expired, cancelled, its worker lost), since
only a success resets them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("summary_tries", sa.Integer(), server_default="0", nullable=False))
    op.add_column("sessions", sa.Column("summary_retry_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("sessions", "summary_retry_at")
    op.drop_column("sessions", "summary_tries")
