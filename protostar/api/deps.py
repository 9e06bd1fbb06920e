"""Dependencies, as ``Annotated`` aliases so routes read like plain signatures."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from protostar.api.state import AppState
from protostar.auth import Principal, hash_key, resolve
from protostar.errors import Forbidden, Unauthorized


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.protostar
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    with state.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_principal(request: Request, state: StateDep) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, raw = header.partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        raise Unauthorized("send 'Authorization: Bearer <api key>'")
    raw = raw.strip()
    key_hash = hash_key(raw)
    principal = state.auth_cache.get(key_hash)
    if principal is None:
        bootstrap = state.settings.bootstrap_api_key
        with state.sessions.begin() as session:
            principal = resolve(session, raw, bootstrap=bootstrap.get_secret_value() if bootstrap else None)
        state.auth_cache.put(key_hash, principal)
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def get_admin(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise Forbidden("this route needs an admin key")
    return principal


AdminDep = Annotated[Principal, Depends(get_admin)]
