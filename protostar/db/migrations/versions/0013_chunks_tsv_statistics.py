"""A finer ``ANALYZE`` of ``chunks.tsv``: up to 10,000 most common lexemes and their shares of the chunks
(statistics target 1,000; the default keeps 1,000). ``protostar.search`` reads them from ``pg_stats`` to take
the "any word" tier's rarest words; a lexeme outside the list counts as rare as the list's least common one.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE chunks ALTER COLUMN tsv SET STATISTICS 1000")


def downgrade() -> None:
    op.execute("ALTER TABLE chunks ALTER COLUMN tsv SET STATISTICS -1")
