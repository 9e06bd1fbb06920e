"""Where the CLI writes: rich consoles for people (colour and live bars only on a terminal), JSON for pipes."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

out = Console(highlight=False, emoji=False)
err = Console(stderr=True, highlight=False, emoji=False)


def emit_json(data: Any) -> None:
    """One JSON document on stdout, as is (no wrapping, no colour)."""
    out.out(json.dumps(data, indent=2, default=str, ensure_ascii=False), highlight=False)


def emit_json_line(data: Any) -> None:
    out.out(json.dumps(data, default=str, ensure_ascii=False), highlight=False)


def fail(message: str) -> None:
    err.print(f"[red]protostar:[/] {escape(message)}", soft_wrap=True)


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    grid = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        grid.add_column(column, overflow="fold")
    for row in rows:
        grid.add_row(*(cell(value) for value in row))
    return grid


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.3f}"
    return escape(str(value))


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def snippet(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def place(filename: str, page: int | None) -> str:
    return f"{filename} p. {page}" if page is not None else filename
