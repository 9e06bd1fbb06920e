"""How a worker sizes its database pool: prefork children (one task at a time) keep two connections, a
thread-pool worker one per thread up to a cap, plus two for its watchers."""

from __future__ import annotations

from celery import Celery

from protostar.bundle import MAX_THREAD_CONNECTIONS, Clients
from protostar.settings import Settings

DATABASE_URL = "postgresql+psycopg://user@127.0.0.1:9/none"  # never connected to: pools open lazily


def pool_of(resources: Clients) -> tuple[int, int]:
    pool = resources.engine.pool
    return pool.size(), pool._max_overflow  # type: ignore[attr-defined]


def test_a_prefork_child_keeps_two_connections() -> None:
    resources = Clients(settings=Settings(database_url=DATABASE_URL), celery=Celery(), role="worker")
    assert pool_of(resources) == (2, 2)


def test_a_thread_pool_keeps_one_connection_per_thread_up_to_the_cap() -> None:
    few = Clients(settings=Settings(database_url=DATABASE_URL), celery=Celery(), role="worker", threads=2)
    many = Clients(settings=Settings(database_url=DATABASE_URL), celery=Celery(), role="worker", threads=50)
    assert pool_of(few) == (2 + 2, 2)
    assert pool_of(many) == (MAX_THREAD_CONNECTIONS + 2, 2)


def test_the_worker_tells_its_resources_how_many_threads_share_them() -> None:
    from types import SimpleNamespace

    from celery.concurrency.prefork import TaskPool as PreforkPool
    from celery.concurrency.thread import TaskPool as ThreadPool

    from protostar.worker import app, resources

    before = resources.current().threads
    try:
        # The attributes celeryd_after_setup's WorkController has once the CLI options are applied.
        app._remember_threads(instance=SimpleNamespace(pool_cls=ThreadPool, concurrency=50))
        assert resources.current().threads == 50
        resources.current().threads = 0
        app._remember_threads(instance=SimpleNamespace(pool_cls=PreforkPool, concurrency=2))
        assert resources.current().threads == 0
    finally:
        resources.current().threads = before
