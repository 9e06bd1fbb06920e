"""Apply Alembic migrations from code, so `protostar up`, the tests and the image share one path."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Upgrade to ``revision``; concurrent callers serialize on an advisory lock in ``env.py``."""
    logger.info("applying migrations up to %s", revision)
    command.upgrade(alembic_config(database_url), revision)
