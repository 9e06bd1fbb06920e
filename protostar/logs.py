"""Logging setup for processes Protostar starts itself (the API; Celery configures its own)."""

from __future__ import annotations

import logging


def setup_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    else:
        root.setLevel(level.upper())
