"""The user CLI (``protostar ingest|search|ask|chat|jobs|documents``), on :mod:`protostar.client`, typer and rich."""

from protostar.console.app import app, run

__all__ = ["app", "run"]
