"""Alembic environment: online migrations only, serialized across processes by an advisory lock."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text

from protostar.db.models import Base

MIGRATION_LOCK = 7_270_421  # any constant; every migrating process takes the same advisory lock


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url is set by protostar.db.migrate"
    engine = create_engine(url)
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
        # The lock is the session's and outlives this commit; alembic then runs its own transaction, which a
        # migration may leave for statements that cannot run in one (``autocommit_block``: CREATE INDEX
        # CONCURRENTLY).
        connection.commit()
        try:
            context.configure(connection=connection, target_metadata=Base.metadata)
            with context.begin_transaction():
                context.run_migrations()
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
            connection.commit()
    engine.dispose()


run_migrations_online()
