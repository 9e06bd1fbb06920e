"""Documents and chunks: pgvector embeddings (HNSW, cosine, per model) and a full-text column (GIN).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

DEFAULT_MODEL, DEFAULT_DIM = "all-MiniLM-L6-v2", 384

# Text extracted from PDFs often glues words at layout boundaries ("CREATION2,32,822New jobs created2"), which
# the parser reads as one token. The full-text column indexes the text as written plus the text pulled apart
# at lower/upper and letter/digit boundaries, so both "created2" and "created" match.
_UNGLUED = (
    "regexp_replace(regexp_replace(regexp_replace(text, '([[:lower:]])([[:upper:]])', '\\1 \\2', 'g'), "
    "'([[:alpha:]])([[:digit:]])', '\\1 \\2', 'g'), '([[:digit:]])([[:alpha:]])', '\\1 \\2', 'g')"
)
TSV = f"to_tsvector('english', text) || to_tsvector('english', {_UNGLUED})"


def upgrade() -> None:
    op.create_table(
        "documents",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("filename", sa.String(512), nullable=False),
        sa.Column("content_type", sa.String(128), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("object_key", sa.String(512), nullable=False),
        sa.Column("status", sa.String(16), server_default="queued", nullable=False),
        sa.Column("chunk_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("page_count", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("metadata", postgresql.JSONB(), server_default=sa.text("'{}'"), nullable=False),
        sa.Column("job_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_documents"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_documents_tenant_id_tenants", ondelete="CASCADE"
        ),
    )
    op.create_index("uq_documents_tenant_sha256", "documents", ["tenant_id", "sha256"], unique=True)
    op.create_index("ix_documents_tenant_created", "documents", ["tenant_id", "created_at", "id"])
    op.create_table(
        "chunks",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("document_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("page", sa.Integer(), nullable=True),
        sa.Column("element_types", postgresql.ARRAY(sa.String(32)), nullable=False),
        sa.Column("token_count", sa.Integer(), nullable=False),
        sa.Column("embedding_model", sa.String(128), nullable=False),
        sa.Column("embedding", Vector(), nullable=False),
        sa.Column(
            "tsv",
            postgresql.TSVECTOR(),
            sa.Computed(TSV, persisted=True),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name="pk_chunks"),
        sa.ForeignKeyConstraint(
            ["document_id"], ["documents.id"], name="fk_chunks_document_id_documents", ondelete="CASCADE"
        ),
    )
    op.create_index("uq_chunks_document_ordinal", "chunks", ["document_id", "ordinal"], unique=True)
    op.create_index("ix_chunks_tenant_id", "chunks", ["tenant_id"])
    op.create_index("ix_chunks_tsv", "chunks", ["tsv"], postgresql_using="gin")
    # One HNSW index per embedding model; the worker creates them for other models (same shape).
    op.execute(
        f"CREATE INDEX ix_chunks_hnsw_all_minilm_l6_v2 ON chunks USING hnsw "
        f"((embedding::vector({DEFAULT_DIM})) vector_cosine_ops) WHERE embedding_model = '{DEFAULT_MODEL}'"
    )


def downgrade() -> None:
    op.drop_table("chunks")
    op.drop_table("documents")
