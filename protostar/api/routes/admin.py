"""Admin: the API keys of the caller's own tenant. Listing never shows a key; a new key is shown once; a revoked
key answers ``401`` from the next request on, in every API process.

An admin key manages its own tenant's keys only (the bootstrap key is an admin of the tenant ``default``), so
no key ever reaches another tenant's data. Keys of every tenant are the operator's: ``protostar keys list``,
``protostar keys create``, ``protostar keys revoke`` with database access.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response

from protostar.api.deps import AdminDep, SessionDep, StateDep
from protostar.api.schemas import KeyCreated, KeyIn, KeyList, KeyOut
from protostar.auth import issue_key, list_keys, revoke_key

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.get("/keys", response_model=KeyList)
def get_keys(principal: AdminDep, session: SessionDep) -> KeyList:
    """Your tenant's keys, newest first, revoked ones included (with ``revoked_at``)."""
    return KeyList(items=[KeyOut.of(k) for k in list_keys(session, tenant_id=principal.tenant_id)])


@router.post("/keys", status_code=201, response_model=KeyCreated)
def create_key(principal: AdminDep, session: SessionDep, body: KeyIn | None = None) -> KeyCreated:
    """A new key of your tenant; the response is the only place the key is ever shown."""
    info, raw = issue_key(session, tenant_id=principal.tenant_id, admin=(body or KeyIn()).admin)
    session.commit()
    return KeyCreated(**KeyOut.of(info).model_dump(), key=raw)


@router.delete("/keys/{key_id}", status_code=204)
def delete_key(key_id: uuid.UUID, principal: AdminDep, session: SessionDep, state: StateDep) -> Response:
    """Revoke one of your tenant's keys: it answers ``401`` from now on. Revoking it again changes nothing."""
    revoke_key(session, state.clients.redis, key_id=key_id, tenant_id=principal.tenant_id)
    session.commit()
    return Response(status_code=204)
