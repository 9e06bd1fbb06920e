"""Dependencies, as ``Annotated`` aliases so routes read like plain signatures. Those that do no I/O are
``async def``: FastAPI runs a sync dependency in the threadpool, a hop per dependency per request."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, TypeVar

from anyio import to_thread
from fastapi import Depends, Request
from sqlalchemy.orm import Session

from protostar.api.deadline import ABANDONED
from protostar.api.guard import AUTH_ERROR, PRINCIPAL
from protostar.api.state import AppState
from protostar.auth import Principal
from protostar.errors import DependencyTimeout, Forbidden


async def get_state(request: Request) -> AppState:
    if request.scope.get(ABANDONED):  # answered 503 by the deadline already: start no work for it
        raise DependencyTimeout("the request was answered already")
    state: AppState = request.app.state.protostar
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    with state.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

T = TypeVar("T")


def _unless_abandoned(request: Request, work: Callable[[], T]) -> T:
    if request.scope.get(ABANDONED):  # answered 503 while it waited for a thread: start no work for it
        raise DependencyTimeout("the request was answered already")
    return work()


async def in_thread(request: Request, work: Callable[[], T]) -> T:
    """``work`` in the threadpool, unless the request was answered by the deadline (``api.deadline``) before a
    thread took it up: as a sync dependency refuses to start work then."""
    return await to_thread.run_sync(_unless_abandoned, request, work)


async def in_one_hop(request: Request, state: AppState, work: Callable[[Session], T]) -> T:
    """``work`` with a session of its own, in one threadpool hop: a sync route with :data:`SessionDep` takes
    three (the session's opening, the route, the session's closing) and a fourth for its response's validation.
    For an ``async def`` route whose database and broker work is all in ``work``."""

    def run() -> T:
        with state.sessions() as session:
            return work(session)

    return await in_thread(request, run)


async def get_principal(request: Request, state: StateDep) -> Principal:
    """The caller, as the guard resolved it before the body was read (``protostar.api.guard``)."""
    resolved = request.scope.get("state", {})
    if AUTH_ERROR in resolved:
        raise resolved[AUTH_ERROR]
    principal = resolved.get(PRINCIPAL)
    if isinstance(principal, Principal):
        return principal
    return await state.resolve(request.headers.get("authorization", ""))


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_admin(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise Forbidden("this route needs an admin key")
    return principal


AdminDep = Annotated[Principal, Depends(get_admin)]
