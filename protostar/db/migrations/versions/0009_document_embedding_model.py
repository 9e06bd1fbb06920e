"""The embedding model of a document's chunks, on the document: which documents a change of
``PROTOSTAR_EMBEDDING_MODEL`` leaves to embed again (``protostar.documents.reembed``), found without reading chunks.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("documents", sa.Column("embedding_model", sa.String(length=128), nullable=True))
    op.execute(
        "UPDATE documents d SET embedding_model = c.embedding_model"
        " FROM (SELECT DISTINCT ON (document_id) document_id, embedding_model FROM chunks"
        " ORDER BY document_id, ordinal) c"
        " WHERE c.document_id = d.id"
    )


def downgrade() -> None:
    op.drop_column("documents", "embedding_model")
