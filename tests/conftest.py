"""The test system: real Redis, PostgreSQL + pgvector and S3 started by the project's own code, and the real
API and Celery workers as subprocesses, exactly as `protostar up` runs them. Nothing is faked here.

Timing settings are shortened (heartbeats, takeover, reaping) so the failure paths run in seconds.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import Engine, text

from protostar import commands
from protostar.auth import create_key
from protostar.cli.up import prestart
from protostar.db.engine import make_engine, make_sessionmaker
from protostar.jobs.broker import create_celery
from protostar.jobs.dispatch import Dispatcher
from protostar.jobs.events import EventLog
from protostar.runtime.process import free_port
from protostar.runtime.stack import S3Access, Stack
from protostar.settings import Settings, get_settings
from protostar.supervisor import RestartPolicy, Supervisor
from tests.submits import TENANT_PREFIX

LOGS = Path(os.environ.get("PROTOSTAR_TEST_LOGS", tempfile.gettempdir())) / "protostar-test-logs"

TEST_ENV = {
    "PROTOSTAR_ENVIRONMENT": "test",
    "PROTOSTAR_LOG_LEVEL": "INFO",
    "PROTOSTAR_HEARTBEAT_INTERVAL": "0.5",
    "PROTOSTAR_TAKEOVER_AFTER": "3",
    "PROTOSTAR_REAP_AFTER": "8",
    "PROTOSTAR_RECONCILE_INTERVAL": "2",
    "PROTOSTAR_SUMMARY_BACKOFF_BASE": "30",
    "PROTOSTAR_UNSENT_GRACE": "1",
    "PROTOSTAR_MAX_ATTEMPTS": "3",
    "PROTOSTAR_TRANSIENT_RETRIES": "3",
    "PROTOSTAR_INGEST_CONCURRENCY": "2",
    # Sharded ingest (tests/ingest/test_shard.py): PDFs over 20 pages in parts of 8 pages and 32 chunks; other
    # documents over 150 chunks embedded in parts (tests/ingest/test_documents_api.py's long report).
    "PROTOSTAR_INGEST_SHARD_PAGES": "20",
    "PROTOSTAR_INGEST_SHARD_CHUNKS": "150",
    "PROTOSTAR_INGEST_PART_PAGES": "8",
    "PROTOSTAR_INGEST_PART_CHUNKS": "32",
    "PROTOSTAR_INGEST_PART_LEASE": "3",
    "PROTOSTAR_CHAT_CONCURRENCY": "8",
    "PROTOSTAR_SUMMARY_CONCURRENCY": "2",
    "PROTOSTAR_MAINTENANCE_CONCURRENCY": "1",
    # Fair turns (tests/jobs/test_turns.py): a tenant's chat cap below the chat threads, a quota a test can reach.
    "PROTOSTAR_TENANT_INFLIGHT_CHAT": "4",
    "PROTOSTAR_TENANT_MAX_QUEUED": "200",
    "PROTOSTAR_MAX_UPLOAD_BYTES": str(40 * 1024 * 1024),
    # OCR (tests/ingest/test_ocr_api.py): a 3-page scan then has a page over the cap.
    "PROTOSTAR_OCR_MAX_PAGES": "2",
    "PROTOSTAR_RESTART_BACKOFF": "0.2",
    "PROTOSTAR_RESTART_BACKOFF_CAP": "2",
    # Above the 2 s default: on a loaded 2-core test machine a first search (model load) or a large upload's
    # hashing may take that long, which is not a dependency being down.
    "PROTOSTAR_DEPENDENCY_TIMEOUT": "5",
    # Webhooks (tests/webhooks): the receiver is a local thread, retries come within seconds.
    "PROTOSTAR_WEBHOOKS_ALLOW_PRIVATE": "true",
    "PROTOSTAR_WEBHOOKS_CONCURRENCY": "2",
    "PROTOSTAR_WEBHOOKS_RETRY_BASE": "0.5",
    "PROTOSTAR_WEBHOOKS_RETRY_CAP": "2",
    "PROTOSTAR_WEBHOOKS_CONNECT_TIMEOUT": "2",
    "PROTOSTAR_WEBHOOKS_READ_TIMEOUT": "3",
    # An endpoint some test left behind (the schema fuzz registers random ones) is given up on soon.
    "PROTOSTAR_WEBHOOKS_MAX_AGE": "120",
    # Usage on /metrics (tests/api/test_usage.py): every test tenant labelled; the cap is tested on its own.
    "PROTOSTAR_USAGE_METRICS_TENANTS": "100000",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The fault tests (tests/faults) last: they stop, freeze and kill parts of the shared stack."""
    faults = Path(__file__).resolve().parent / "faults"
    items.sort(key=lambda item: faults in Path(str(item.path)).parents)


@dataclass
class Live:
    settings: Settings
    stack: Stack
    supervisor: Supervisor
    api_url: str
    admin_key: str
    log: Path

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.admin_key}"} if key != "" else {}
        return httpx.Client(base_url=self.api_url, headers=headers, timeout=10, **kwargs)


def wait_for(check: Callable[[], Any], *, timeout: float = 30, every: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    data_dir = Path(tempfile.mkdtemp(prefix="protostar-test-"))
    data_dir.chmod(0o755)  # the embedded PostgreSQL runs as a system user when tests run as root
    env = {
        **TEST_ENV,
        "PROTOSTAR_DATA_DIR": str(data_dir),
        "PROTOSTAR_REDIS_PORT": str(free_port()),
        "PROTOSTAR_POSTGRES_PORT": str(free_port()),
        "PROTOSTAR_S3_PORT": str(free_port()),
        "PROTOSTAR_LLM_PORT": str(free_port()),
        "PROTOSTAR_API_PORT": str(free_port()),
        "PROTOSTAR_BOOTSTRAP_API_KEY": "ps_test_" + secrets.token_urlsafe(24),
    }
    os.environ.update(env)
    get_settings.cache_clear()
    stack = Stack(get_settings())
    stack.start()
    os.environ.update(stack.env())
    get_settings.cache_clear()
    try:
        prestart(get_settings())
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def settings(stack: Stack) -> Settings:
    return get_settings()


@pytest.fixture(scope="session")
def live(stack: Stack, settings: Settings) -> Iterator[Live]:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"live-{os.getpid()}.log"
    out = log.open("w")
    # As under `protostar up`, a process that dies is restarted (from the supervisor's own thread), and each gets
    # only its own secrets (the object store's scoped keys among them).
    s3_keys: dict[S3Access, dict[str, str]] = {"write": stack.s3_env("write"), "read": stack.s3_env("read")}
    supervisor = Supervisor(
        env=dict(os.environ),
        out=out,
        policy=RestartPolicy.from_settings(settings),
        scope=lambda name, env: commands.environment(name, env, s3_keys),
    )
    try:
        supervisor.start("api", commands.api(settings))
        for name in commands.WORKERS:
            supervisor.start(f"worker-{name}", commands.worker(settings, name))
        supervisor.keep_alive()
        live = Live(
            settings,
            stack,
            supervisor,
            settings.public_api_url,
            settings.bootstrap_api_key.get_secret_value() if settings.bootstrap_api_key else "",
            log,
        )
        with live.client() as client:
            wait_for(lambda: _ok(client, "/readyz"), timeout=120, what=f"the API (log: {log})")
            # Every worker consumes: a probe on each queue succeeds.
            for queue in ("ingest", "chat", "summary"):
                job_id = client.post("/v1/probes", json={"queue": queue, "steps": 1}).json()["job_id"]
                wait_for(
                    lambda j=job_id: client.get(f"/v1/jobs/{j}").json()["status"] == "succeeded",
                    timeout=180,  # an ingest child loads its parsers and model first
                    what=f"a worker on {queue} (log: {log})",
                )
        yield live
    finally:
        supervisor.stop_all()
        out.close()


def _ok(client: httpx.Client, path: str) -> bool:
    try:
        return client.get(path).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="session")
def engine(stack: Stack, settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings, pool_size=2, pre_ping=True)  # tests restart PostgreSQL under it
    yield engine
    engine.dispose()


@pytest.fixture
def api(live: Live) -> Iterator[httpx.Client]:
    with live.client() as client:
        yield client


@pytest.fixture
def own_api(request: pytest.FixtureRequest, live: Live, engine: Engine) -> Iterator[httpx.Client]:
    """A client of a tenant of this test's own. Searches see only its documents, not the shared admin tenant's
    (other tests upload the same facts there, and its size changes how the vector side scans); its jobs take only
    its own turns, and no other test's leftovers (a turn whose send met a stopped Redis, sent again only by the
    reconciler, which no beat runs here) hold them."""
    with make_sessionmaker(engine).begin() as session:
        key = create_key(session, tenant=f"{request.node.name[:40]}-{uuid.uuid4().hex[:8]}")
    with live.client(key) as client:
        yield client


@pytest.fixture(scope="session")
def client(live: Live) -> Iterator[redis.Redis]:
    """A Redis client on the live broker."""
    assert live.settings.redis_url
    client = redis.Redis.from_url(live.settings.redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def dispatcher(live: Live, engine: Engine, client: redis.Redis) -> Dispatcher:
    """A dispatcher as the API builds one, on the live stack."""
    settings = live.settings
    events = EventLog(client, ttl=settings.events_ttl, maxlen=settings.events_maxlen)
    return Dispatcher(celery=create_celery(settings, role="api"), engine=engine, events=events, settings=settings)


@pytest.fixture
def pool(live: Live) -> Iterator[Engine]:
    """An engine of its own; the tenants made on it with ``tests.submits.new_tenant`` are removed after the test,
    with their jobs (nothing sends them: no reconciler should find them later)."""
    engine = make_engine(live.settings, pool_size=8)
    yield engine
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM tenants WHERE name LIKE :prefix"), {"prefix": f"{TENANT_PREFIX}%"})
    engine.dispose()
