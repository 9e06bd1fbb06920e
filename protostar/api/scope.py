"""A search's or a chat message's scope from its request: the collections checked to be the caller's (a
``404`` otherwise) and the metadata filter parsed (already validated by the request's schema)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from protostar.documents import collections
from protostar.documents.filters import parse_filter
from protostar.search import Scope


def scope_of(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    collection_ids: list[uuid.UUID] | None,
    filter: dict[str, Any] | None,
) -> Scope:
    owned = collections.check_owned(session, tenant_id=tenant_id, collection_ids=collection_ids or [])
    return Scope(collection_ids=tuple(owned), filter=tuple(parse_filter(filter or {})))
