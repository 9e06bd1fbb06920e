"""Usage per tenant, UTC day and job kind (``protostar.jobs.usage``), counted from here on in the transaction
that ends each job; the jobs that ended before this migration are counted by it, from their rows.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

COUNTERS = (
    "succeeded",
    "failed",
    "cancelled",
    "searches",
    "pages",
    "chunks",
    "embedding_tokens",
    "prompt_tokens",
    "completion_tokens",
)

# The same figures as ``jobs.usage.figures``, from the rows of the jobs that ended already.
BACKFILL = """
INSERT INTO usage_daily (tenant_id, day, kind, succeeded, failed, cancelled, pages, chunks, embedding_tokens,
                         prompt_tokens, completion_tokens)
SELECT tenant_id, (finished_at AT TIME ZONE 'UTC')::date, kind,
       count(*) FILTER (WHERE status = 'succeeded'),
       count(*) FILTER (WHERE status = 'failed'),
       count(*) FILTER (WHERE status = 'cancelled'),
       coalesce(sum(CASE WHEN kind = 'ingest' AND jsonb_typeof(result->'pages') = 'number'
                         THEN (result->>'pages')::numeric END), 0),
       coalesce(sum(CASE WHEN kind = 'ingest' AND jsonb_typeof(result->'chunks') = 'number'
                         THEN (result->>'chunks')::numeric END), 0),
       coalesce(sum(CASE WHEN kind = 'ingest' AND jsonb_typeof(result->'embedding_tokens') = 'number'
                         THEN (result->>'embedding_tokens')::numeric END), 0),
       coalesce(sum(CASE WHEN kind <> 'ingest' AND jsonb_typeof(result->'usage'->'prompt_tokens') = 'number'
                         THEN (result->'usage'->>'prompt_tokens')::numeric END), 0),
       coalesce(sum(CASE WHEN kind <> 'ingest' AND jsonb_typeof(result->'usage'->'completion_tokens') = 'number'
                         THEN (result->'usage'->>'completion_tokens')::numeric END), 0)
FROM jobs
WHERE status IN ('succeeded', 'failed', 'cancelled') AND finished_at IS NOT NULL
GROUP BY tenant_id, (finished_at AT TIME ZONE 'UTC')::date, kind
"""


def upgrade() -> None:
    op.create_table(
        "usage_daily",
        sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        *(sa.Column(name, sa.BigInteger(), server_default="0", nullable=False) for name in COUNTERS),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_usage_daily_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", "day", "kind", name=op.f("pk_usage_daily")),
    )
    op.execute(BACKFILL)


def downgrade() -> None:
    op.drop_table("usage_daily")
