"""API keys and tenants (the keys' repository: all their SQL is here). A key is ``ps_`` + 43 url-safe
characters (256 random bits); only its SHA-256 is stored, which is safe for random secrets of that length and
fast enough to check on every request. A revoked key keeps its row (``revoked_at`` set) and never resolves
again.

API processes keep resolved keys for a while (``protostar.api.state``). Revoking a key first sets a stamp in
Redis under :func:`revocation_stamp` (kept :data:`STAMP_TTL` seconds, far longer than any cache entry), then
updates the row: a process that finds the stamp on a cache hit asks the database again, so a revocation is
seen by every process on the next request, and a stamp without a revoked row only costs a lookup."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

import redis
from sqlalchemy import Select, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from protostar.db.models import ApiKey, Tenant
from protostar.errors import NotFound, Unauthorized

KEY_PREFIX = "ps_"
STAMP_TTL = 3600
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


@dataclass(frozen=True)
class KeyInfo:
    """A key as admins see it: never the key itself, only its first characters."""

    id: uuid.UUID
    tenant: str
    prefix: str
    is_admin: bool
    created_at: datetime
    revoked_at: datetime | None


def create_key(session: Session, *, tenant: str, admin: bool = False) -> str:
    """Create a key for ``tenant`` (created if new). The raw key is returned once and never stored."""
    _, raw = issue_key(session, tenant_id=ensure_tenant(session, tenant), admin=admin)
    return raw


def issue_key(session: Session, *, tenant_id: uuid.UUID, admin: bool = False) -> tuple[KeyInfo, str]:
    """A new key of an existing tenant: its listing and the raw key (shown once, never stored)."""
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(id=uuid.uuid4(), tenant_id=tenant_id, prefix=raw[:10], key_hash=hash_key(raw), is_admin=admin)
    session.add(row)
    session.flush()
    return _one(session, row.id, tenant_id), raw


def _listing() -> Select[uuid.UUID, str, str, bool, datetime, datetime | None]:
    return select(ApiKey.id, Tenant.name, ApiKey.prefix, ApiKey.is_admin, ApiKey.created_at, ApiKey.revoked_at).join(
        Tenant, Tenant.id == ApiKey.tenant_id
    )


def list_keys(session: Session, *, tenant_id: uuid.UUID | None = None, limit: int = 1000) -> list[KeyInfo]:
    """Keys newest first: of one tenant, or of every tenant (``tenant_id`` None: the operator's CLI)."""
    query = _listing().order_by(ApiKey.created_at.desc(), ApiKey.id).limit(limit)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    return [_info(*row) for row in session.execute(query)]


def revocation_stamp(key_hash: str) -> str:
    return f"protostar:keys:revoked:{key_hash}"


def revoke_key(
    session: Session, client: redis.Redis, *, key_id: uuid.UUID, tenant_id: uuid.UUID | None = None
) -> KeyInfo:
    """Revoke a key (of ``tenant_id`` only, when given). Revoking it again keeps the first ``revoked_at``.

    The stamp is set before the row changes (a Redis error leaves the key as it was); commit the session after."""
    scope = [ApiKey.id == key_id] + ([ApiKey.tenant_id == tenant_id] if tenant_id is not None else [])
    key_hash = session.execute(select(ApiKey.key_hash).where(*scope)).scalar_one_or_none()
    if key_hash is None:
        raise NotFound(f"key {key_id} not found")
    client.set(revocation_stamp(key_hash), "1", ex=STAMP_TTL)
    session.execute(update(ApiKey).where(*scope, ApiKey.revoked_at.is_(None)).values(revoked_at=func.now()))
    return _one(session, key_id, tenant_id)


def _one(session: Session, key_id: uuid.UUID, tenant_id: uuid.UUID | None) -> KeyInfo:
    query = _listing().where(ApiKey.id == key_id)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    row = session.execute(query).first()
    if row is None:
        raise NotFound(f"key {key_id} not found")
    return _info(*row)


def _info(
    key_id: uuid.UUID, tenant: str, prefix: str, is_admin: bool, created_at: datetime, revoked_at: datetime | None
) -> KeyInfo:
    return KeyInfo(
        id=key_id, tenant=tenant, prefix=prefix, is_admin=is_admin, created_at=created_at, revoked_at=revoked_at
    )


def bearer_key(header: str) -> str:
    """The key of an ``Authorization: Bearer <key>`` header; raises ``Unauthorized``."""
    scheme, _, raw = header.partition(" ")
    raw = raw.strip()
    if scheme.lower() != "bearer" or not raw:
        raise Unauthorized("send 'Authorization: Bearer <api key>'")
    return raw


def bootstrap_principal(session: Session) -> Principal:
    """What ``PROTOSTAR_BOOTSTRAP_API_KEY`` is: an admin of the tenant ``default`` (created if new)."""
    return Principal(tenant_id=ensure_tenant(session, DEFAULT_TENANT), is_admin=True)


def resolve(session: Session, raw: str) -> Principal:
    """The principal of a stored, unrevoked key; raises ``Unauthorized``."""
    row = session.execute(
        select(ApiKey.tenant_id, ApiKey.is_admin).where(ApiKey.key_hash == hash_key(raw), ApiKey.revoked_at.is_(None))
    ).first()
    if row is None:
        raise Unauthorized("invalid API key")
    return Principal(tenant_id=row.tenant_id, is_admin=row.is_admin)
