"""A tenant's row by its id: another tenant's is answered as a missing one (a ``404`` that tells nothing)."""

from __future__ import annotations

import uuid
from typing import Protocol, TypeVar

from sqlalchemy.orm import Session

from protostar.errors import NotFound


class _Owned(Protocol):
    @property
    def tenant_id(self) -> uuid.UUID: ...


Row = TypeVar("Row", bound=_Owned)


def owned(session: Session, model: type[Row], row_id: uuid.UUID, *, tenant_id: uuid.UUID, name: str) -> Row:
    """The ``model`` row ``row_id`` when it is ``tenant_id``'s; ``NotFound`` ("<name> <id> not found") otherwise."""
    row = session.get(model, row_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFound(f"{name} {row_id} not found")
    return row
