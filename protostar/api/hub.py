"""One relay per API process: every followed job's Redis Stream read by one task, fanned out to subscribers.

Before, each SSE follower held a pooled Redis connection for its blocking ``XREAD``, so the pool's size (100)
capped the streams of a whole API process, and stream 101 broke after its ``200``. Now :class:`Hub` runs one
asyncio task with its own connection: ``XREAD BLOCK`` over all followed stream keys at once (and a private wake
key), and each entry it reads goes to the queue of every subscriber of that key. Short reads (a subscriber's
replay, the wake) go through a small *blocking* pool, where a burst of joins waits for a connection instead of
failing.

A subscriber (``protostar.api.sse``) replays what it missed with non-blocking reads, then :meth:`Hub.subscribe`
s with the last id it has, replays once more (what the hub read for others before it joined), and follows its
queue; it drops what it already has by id, so the union has no gap and no repeat. Joining a key the hub does not
read yet wakes the hub's blocking read: an entry on the wake key (a stream, so a wake sent just before the read
starts is still seen). A subscriber whose queue passes :data:`QUEUE_BATCHES` (a client that reads too slowly)
gets :data:`OVERFLOW` and replays from its last id itself; the hub never waits for a subscriber.

If Redis goes away the hub retries with capped, jittered backoff (``protostar.backoff``); its cursors and
subscribers stay, so followers go on from the entry they had. It is started and stopped with the app's lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Final

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from protostar.backoff import delay
from protostar.jobs.events import Event, decode, stream_key

logger = logging.getLogger(__name__)

BLOCK_MS = 5_000  # the hub's longest blocking read; a join wakes it sooner
READ_COUNT = 500  # entries per key and read
QUEUE_BATCHES = 256  # batches a subscriber may have waiting before it is told to replay
POOL_CONNECTIONS = 16  # the blocking pool of short reads (replays, wakes, stream leases)
POOL_WAIT = 10.0  # seconds a short read waits for a pooled connection
POOL_RETRIES, POOL_RETRY_BASE, POOL_RETRY_CAP = 2, 0.05, 0.5  # a short read on a dropped connection: tries again
BACKOFF_BASE, BACKOFF_CAP = 0.1, 5.0  # seconds: the hub's reconnects
WAKE_PREFIX = "protostar:hub:wake:"
WAKE_TTL = 60  # seconds
STOP_WAIT = 5.0  # seconds the relay's task is given to end at shutdown


class _Overflow:
    pass


OVERFLOW: Final = _Overflow()


@dataclass(eq=False)
class Subscription:
    """One follower of one key: batches of events the hub read, in order, or :data:`OVERFLOW`."""

    key: str
    queue: asyncio.Queue[list[Event] | _Overflow] = field(default_factory=asyncio.Queue)
    overflowed: bool = False

    def offer(self, batch: list[Event]) -> None:
        if self.overflowed:
            return
        if self.queue.qsize() >= QUEUE_BATCHES:
            self.overflowed = True
            self.queue.put_nowait(OVERFLOW)
            return
        self.queue.put_nowait(batch)

    async def next(self, timeout: float) -> list[Event] | _Overflow | None:
        """The next batch, :data:`OVERFLOW` (replay, then go on), or None after ``timeout`` seconds."""
        if self.queue.empty():
            try:
                async with asyncio.timeout(timeout):  # no task per wait, unlike wait_for
                    item = await self.queue.get()
            except TimeoutError:
                return None
        else:
            item = self.queue.get_nowait()
        if item is OVERFLOW:
            self.overflowed = False
        return item


class Hub:
    def __init__(self, url: str, *, connect_timeout: float, read_timeout: float, block_ms: int = BLOCK_MS) -> None:
        self.url, self.block_ms = url, block_ms
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self._subs: dict[str, set[Subscription]] = {}
        self._cursors: dict[str, str] = {}
        self._wake_key = f"{WAKE_PREFIX}{uuid.uuid4().hex}"
        self._wake_cursor = "0-0"
        self._wake_pending = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._task: asyncio.Task[None] | None = None
        self._reader: aioredis.Redis | None = None
        self._redis: aioredis.Redis | None = None
        self.reconnects = 0
        self._stopping = False

    # lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._reader = aioredis.Redis.from_url(
            self.url,
            socket_connect_timeout=self.connect_timeout,
            socket_timeout=self.block_ms / 1000 + self.read_timeout,  # above the blocking read
            max_connections=1,
        )
        # After a Redis restart every pooled connection is dead: a command retries on a fresh one (capped,
        # jittered) instead of answering a stream's opening with 503.
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=POOL_CONNECTIONS,
            timeout=POOL_WAIT,
            socket_connect_timeout=self.connect_timeout,
            socket_timeout=self.read_timeout,
            retry=Retry(ExponentialWithJitterBackoff(base=POOL_RETRY_BASE, cap=POOL_RETRY_CAP), POOL_RETRIES),
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        self._task = asyncio.create_task(self._run(), name="sse-hub")

    async def stop(self) -> None:
        """Stop the relay. A blocking read may swallow its task's cancellation (redis-py turns it into a
        dropped connection and the loop would read again), so a flag ends the loop and closing the reader's
        connection ends the read."""
        self._stopping = True
        for task in [self._task, *self._tasks]:
            if task is not None:
                task.cancel()
        for client in (self._reader, self._redis):
            if client is not None:
                with contextlib.suppress(Exception):  # boundary: closing at shutdown, Redis may be gone
                    await client.aclose()
        for task in [self._task, *self._tasks]:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
                    await asyncio.wait_for(task, STOP_WAIT)
        self._task = None

    @property
    def redis(self) -> aioredis.Redis:
        """The blocking pool for short commands (replays, leases)."""
        if self._redis is None:
            raise RuntimeError("the hub is not started")
        return self._redis

    @property
    def followers(self) -> int:
        return sum(len(s) for s in self._subs.values())

    # subscribers ----------------------------------------------------------------------------------------

    def subscribe(self, job_id: uuid.UUID | str, after: str) -> Subscription:
        """Follow a job's stream from now on; a key the hub does not read yet is read from ``after``."""
        key = stream_key(job_id)
        sub = Subscription(key)
        subs = self._subs.setdefault(key, set())
        if not subs:
            self._cursors[key] = after
        subs.add(sub)
        self._wake()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.key)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._subs[sub.key]
            self._cursors.pop(sub.key, None)

    async def replay(self, job_id: uuid.UUID | str, after: str) -> list[Event]:
        """Entries after ``after`` that are in the stream now (non-blocking; at most :data:`READ_COUNT`)."""
        reply: Any = await self.redis.xread({stream_key(job_id): after}, count=READ_COUNT)
        return [decode(i, f) for _, entries in reply or [] for i, f in entries]

    async def exists(self, job_id: uuid.UUID | str) -> bool:
        return bool(await self.redis.exists(stream_key(job_id)))

    def _wake(self) -> None:
        if self._wake_pending or self._task is None:
            return
        self._wake_pending = True
        task = asyncio.create_task(self._send_wake())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_wake(self) -> None:
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xadd(self._wake_key, {"w": "1"}, maxlen=16, approximate=True)
            pipe.expire(self._wake_key, WAKE_TTL)
            await pipe.execute()
        except (redis.RedisError, OSError) as exc:  # the hub is reconnecting: its next read has the new key
            logger.debug("hub wake not sent: %s", exc)

    # the relay ------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                await self._read_once()
                if failures:
                    logger.info("event hub reconnected after %d failed reads", failures)
                failures = 0
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                if self._stopping:
                    return
                self.reconnects += 1
                wait = delay(failures, base=BACKOFF_BASE, cap=BACKOFF_CAP)
                failures += 1
                logger.warning("event hub: Redis unavailable (%s); retrying in %.1f s", type(exc).__name__, wait)
                await asyncio.sleep(wait)
            except Exception:  # boundary: the relay of every stream must outlive any one bad read
                wait = delay(failures, base=BACKOFF_BASE, cap=BACKOFF_CAP)
                failures += 1
                logger.exception("event hub: read failed; retrying in %.1f s", wait)
                await asyncio.sleep(wait)

    async def _read_once(self) -> None:
        assert self._reader is not None
        self._wake_pending = False  # a join after this line wakes the read below
        streams: dict[Any, Any] = dict(self._cursors)
        streams[self._wake_key] = self._wake_cursor
        reply: Any = await self._reader.xread(streams, count=READ_COUNT, block=self.block_ms)
        for raw_key, entries in reply or []:
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            if not entries:
                continue
            if key == self._wake_key:
                last = entries[-1][0]
                self._wake_cursor = last.decode() if isinstance(last, bytes) else last
                continue
            batch = [decode(i, f) for i, f in entries]
            if key in self._cursors:
                self._cursors[key] = batch[-1].id
            for sub in list(self._subs.get(key, ())):
                sub.offer(batch)
