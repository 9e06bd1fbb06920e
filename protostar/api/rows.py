"""The rows of the jobs that quiet event streams look at, read together in one query.

A stream with no event for a keep-alive interval (10 s) looks at its job's row: a job whose end is recorded
but whose ``done`` never came is told from the row (``protostar.api.sse``). With 1,000 quiet streams that
would be 100 queries (and threadpool hops) a second; gathered over :data:`ROWS_WINDOW` it is one each time.
"""

from __future__ import annotations

import asyncio
import uuid

from anyio import to_thread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from protostar.db.models import Job

ROWS_WINDOW = 0.05  # seconds in which streams' looks at their job rows are gathered into one query


class JobRows:
    """The rows of quiet streams' jobs, read together: every stream that looks at its job's row within
    :data:`ROWS_WINDOW` shares one query (1,000 quiet streams would otherwise make 100 queries a second)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self._pending: dict[uuid.UUID, list[asyncio.Future[Job | None]]] = {}
        self._flush: asyncio.Task[None] | None = None

    async def get(self, job_id: uuid.UUID) -> Job | None:
        """The job's row now (None once it is deleted)."""
        future: asyncio.Future[Job | None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(job_id, []).append(future)
        if self._flush is None:
            self._flush = asyncio.create_task(self._read())
        return await future

    async def _read(self) -> None:
        await asyncio.sleep(ROWS_WINDOW)
        pending, self._pending, self._flush = self._pending, {}, None
        try:
            rows = await to_thread.run_sync(self._load, list(pending))
        except Exception as exc:  # noqa: BLE001 (handed on: each waiting stream gets the failure, PostgreSQL down)
            for futures in pending.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        for job_id, futures in pending.items():
            for future in futures:
                if not future.done():  # its stream may have ended meanwhile
                    future.set_result(rows.get(job_id))

    def _load(self, ids: list[uuid.UUID]) -> dict[uuid.UUID, Job]:
        with self.sessions() as session:
            return {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(ids)))}
