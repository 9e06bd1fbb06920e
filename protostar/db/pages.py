"""Keyset pagination, newest first, for any table with ``created_at`` and a unique ``id`` (or, for a session's
messages, a unique increasing ``seq``): a page is read after the last row of the previous one, so rows added
meanwhile never shift or repeat a page."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

from protostar.errors import ValidationFailed

T = TypeVar("T")


def encode_cursor(created_at: datetime, ident: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{ident}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, ident = raw.split("|")
        return datetime.fromisoformat(stamp), uuid.UUID(ident)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationFailed("cursor is not one this API returned") from exc


def newest_first(
    session: Session, stmt: Select[T], *, model: Any, limit: int, cursor: str | None
) -> tuple[list[T], str | None]:
    """One page of ``stmt``'s rows (instances of ``model``), newest first, and the cursor of the next page."""
    if cursor:
        created, ident = decode_cursor(cursor)
        stmt = stmt.where(or_(model.created_at < created, and_(model.created_at == created, model.id < ident)))
    rows = list(session.scalars(stmt.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    last: Any = rows[-1] if rows else None
    return rows, (encode_cursor(last.created_at, last.id) if more and last is not None else None)


def latest_by_seq(
    session: Session, stmt: Select[T], *, column: Any, limit: int, cursor: str | None
) -> tuple[list[T], str | None]:
    """One page of ``stmt``'s rows, highest ``column`` (a unique, increasing sequence) first, and the cursor of
    the next page (lower values)."""
    if cursor:
        stmt = stmt.where(column < _decode_seq(cursor))
    rows = list(session.scalars(stmt.order_by(column.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    last: Any = rows[-1] if rows else None
    return rows, (_encode_seq(getattr(last, column.key)) if more and last is not None else None)


def _encode_seq(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq|{seq}".encode()).decode().rstrip("=")


def _decode_seq(cursor: str) -> int:
    try:
        tag, seq = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split("|")
        if tag != "seq":
            raise ValueError(tag)
        return int(seq)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationFailed("cursor is not one this API returned") from exc
