"""The worker process's clients (:class:`protostar.bundle.Clients`): made when the worker starts, forgotten
after fork so that each prefork child builds its own on first use."""

from __future__ import annotations

from celery import Celery

from protostar.bundle import Clients
from protostar.settings import get_settings

_current: Clients | None = None


def init(celery: Celery) -> Clients:
    global _current  # noqa: PLW0603 (one set of clients per process, set when the worker starts)
    _current = Clients(settings=get_settings(), celery=celery, role="worker")
    return _current


def current() -> Clients:
    assert _current is not None, "protostar.worker.app sets up the clients when the worker starts"
    return _current


def after_fork() -> None:
    """A prefork child must not reuse the sockets it inherited: forget them, build anew on first use."""
    if _current is not None:
        _current.close()
