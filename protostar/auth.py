"""API keys and tenants. A key is ``ps_`` + 43 url-safe characters (256 random bits); only its SHA-256 is
stored, which is safe for random secrets of that length and fast enough to check on every request."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from protostar.db.models import ApiKey, Tenant
from protostar.errors import Unauthorized

KEY_PREFIX = "ps_"
DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class Principal:
    tenant_id: uuid.UUID
    is_admin: bool


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def ensure_tenant(session: Session, name: str) -> uuid.UUID:
    session.execute(insert(Tenant).values(id=uuid.uuid4(), name=name).on_conflict_do_nothing(index_elements=["name"]))
    return session.execute(select(Tenant.id).where(Tenant.name == name)).scalar_one()


def create_key(session: Session, *, tenant: str, admin: bool = False) -> str:
    """Create a key for ``tenant`` (created if new). The raw key is returned once and never stored."""
    tenant_id = ensure_tenant(session, tenant)
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant_id=tenant_id, prefix=raw[:10], key_hash=hash_key(raw), is_admin=admin))
    session.flush()
    return raw


def resolve(session: Session, raw: str, *, bootstrap: str | None) -> Principal:
    if bootstrap and hmac.compare_digest(raw.encode(), bootstrap.encode()):
        return Principal(tenant_id=ensure_tenant(session, DEFAULT_TENANT), is_admin=True)
    row = session.execute(
        select(ApiKey.tenant_id, ApiKey.is_admin).where(ApiKey.key_hash == hash_key(raw), ApiKey.revoked_at.is_(None))
    ).first()
    if row is None:
        raise Unauthorized("invalid API key")
    return Principal(tenant_id=row.tenant_id, is_admin=row.is_admin)
