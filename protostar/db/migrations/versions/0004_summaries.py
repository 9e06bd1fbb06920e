"""Session summaries (versioned, unique per covered range), document summaries, and at most one summary job
in flight per session or document (partial unique indexes on ``jobs``).

Document summaries get their own table rather than a column on ``documents``: the documents row is read by
every list and get, while a summary is derived data with its own provenance (job, token counts) that a re-run
replaces as a unit; the table cascades with its document.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

IN_FLIGHT = "status IN ('queued', 'running')"


def upgrade() -> None:
    op.create_table(
        "summaries",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("session_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("covers_seq", sa.BigInteger(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("tokens_before", sa.Integer(), nullable=False),
        sa.Column("tokens_after", sa.Integer(), nullable=False),
        sa.Column("job_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_summaries"),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name="fk_summaries_session_id_sessions", ondelete="CASCADE"
        ),
    )
    op.create_index("uq_summaries_session_covers", "summaries", ["session_id", "covers_seq"], unique=True)
    op.create_table(
        "document_summaries",
        sa.Column("document_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("chunk_count", sa.Integer(), nullable=False),
        sa.Column("tokens_before", sa.Integer(), nullable=False),
        sa.Column("tokens_after", sa.Integer(), nullable=False),
        sa.Column("job_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("document_id", name="pk_document_summaries"),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["documents.id"],
            name="fk_document_summaries_document_id_documents",
            ondelete="CASCADE",
        ),
    )
    op.execute(
        "CREATE UNIQUE INDEX uq_jobs_summary_session_in_flight ON jobs ((payload->>'session_id')) "
        f"WHERE kind = 'summary_session' AND {IN_FLIGHT}"
    )
    op.execute(
        "CREATE UNIQUE INDEX uq_jobs_summary_document_in_flight ON jobs ((payload->>'document_id')) "
        f"WHERE kind = 'summary_document' AND {IN_FLIGHT}"
    )


def downgrade() -> None:
    op.drop_index("uq_jobs_summary_document_in_flight", table_name="jobs")
    op.drop_index("uq_jobs_summary_session_in_flight", table_name="jobs")
    op.drop_table("document_summaries")
    op.drop_table("summaries")
