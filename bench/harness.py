"""The system under test, as ``protostar up`` runs it: :func:`launched` starts the embedded services and the API
in a temp dir on free ports (``bench_env``) and answers a :class:`System`, which starts workers, makes tenant
keys and HTTP clients, and waits for a job on its Redis event stream (a :class:`JobRun`). Every benchmark runs
on it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import secrets
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from bench.common import ROOT, wait_idle

INGEST_WORKER = "ingest"


# Reference rankings of the stored chunks, without Protostar's fusion (the retrieval phases of bench.ingest and
# bench.quality): exact cosine order (run with index scans off), and the two full-text tiers (chunks with every
# word of the question first, then with any of them, each by ts_rank_cd) without the pool bound.
VECTOR_ONLY = """
SELECT document_id, text FROM chunks
WHERE tenant_id = %(tenant)s AND embedding_model = %(model)s
ORDER BY embedding::vector({dim}) <=> %(vector)s::vector({dim}), id
LIMIT %(k)s
"""

FULL_TEXT_ONLY = """
WITH q AS (
    SELECT websearch_to_tsquery('english', %(query)s) AS strict, websearch_to_tsquery('english', %(loose)s) AS loose
)
SELECT c.document_id, c.text FROM chunks c CROSS JOIN q
WHERE c.tenant_id = %(tenant)s AND c.embedding_model = %(model)s AND (c.tsv @@ q.strict OR c.tsv @@ q.loose)
ORDER BY (c.tsv @@ q.strict) DESC,
         CASE WHEN c.tsv @@ q.strict THEN ts_rank_cd(c.tsv, q.strict) ELSE ts_rank_cd(c.tsv, q.loose) END DESC,
         c.id
LIMIT %(k)s
"""


@dataclass(frozen=True)
class JobRun:
    """One finished job, with the timestamps of its events (Redis stream ids are milliseconds)."""

    job: dict[str, Any]
    submitted: float  # time.time() just before the upload was sent
    events: list[tuple[float, str, dict[str, Any]]]  # (seconds since epoch, type, data)

    @property
    def started(self) -> float:
        return _epoch(self.job["started_at"])

    @property
    def finished(self) -> float:
        return _epoch(self.job["finished_at"])

    def stage_seconds(self) -> dict[str, float]:
        """Seconds per pipeline stage, from the pipeline's progress events: ``download 0/1`` → ``parse 0/1`` →
        ``parse 1/1`` → ``chunk n/n`` (chunking done) → ``store 0/1`` (embedding done) → ``store 1/1``. The
        rest of started_at → finished_at (claim, document rows, job end) is ``shell``."""
        first: dict[str, float] = {}
        last: dict[str, float] = {}
        for at, kind, data in self.events:
            if kind == "progress":
                first.setdefault(str(data["stage"]), at)
                last[str(data["stage"])] = at
        return {
            "download": first["parse"] - first["download"],
            "parse": last["parse"] - first["parse"],
            "chunk": first["chunk"] - last["parse"],
            "embed": first["store"] - first["chunk"],
            "store": last["store"] - first["store"],
            "shell": (first["download"] - self.started) + (self.finished - last["store"]),
        }


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


@dataclass
class System:
    settings: Any
    stack: Any
    supervisor: Any
    admin_key: str
    log: IO[str] | None = None  # where the processes' output goes
    engine: Any = None
    redis: Any = None
    host: str = field(default_factory=socket.gethostname)

    def __post_init__(self) -> None:
        import redis

        from protostar.db.engine import make_engine

        self.redis = redis.Redis.from_url(self.settings.redis_url)
        self.engine = make_engine(self.settings, pool_size=2, pre_ping=True)  # chaos restarts PostgreSQL under it

    # processes --------------------------------------------------------------------------------------------

    def pid(self, name: str) -> int | None:
        return self.supervisor.pid(name)

    def start_worker(self, name: str) -> None:
        """One worker as ``protostar up`` runs it (``commands.worker``), named ``worker-<name>``."""
        from protostar import commands

        self.supervisor.start(f"worker-{name}", commands.worker(self.settings, name))

    def start_ingest_worker(self, timeout: float = 180) -> None:
        """One ingest worker (``commands.worker``: prefork, concurrency from the settings), waited for until a
        probe on the ingest queue succeeds: its pool child has loaded the parsers and the model by then."""
        self.start_worker(INGEST_WORKER)
        with self.client(self.admin_key) as api:
            job_id = api.post("/v1/probes", json={"queue": "ingest", "steps": 1}).json()["job_id"]
            run = self.wait(job_id, submitted=time.time(), api=api, timeout=timeout)
        if run.job["status"] != "succeeded":
            raise RuntimeError(f"the ingest worker's probe ended {run.job['status']}: {run.job.get('error')}")
        wait_idle(self.pid(f"worker-{INGEST_WORKER}"), "the ingest worker")

    def stop(self, name: str) -> None:
        self.supervisor.stop(name)

    # tenants and HTTP -----------------------------------------------------------------------------------

    def tenant_key(self, tenant: str) -> tuple[str, uuid.UUID]:
        """A new API key for ``tenant`` (created if new), and the tenant's id."""
        from protostar.auth import create_key, ensure_tenant
        from protostar.db.engine import make_sessionmaker

        with make_sessionmaker(self.engine).begin() as session:
            key = create_key(session, tenant=tenant)
            return key, ensure_tenant(session, tenant)

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.settings.public_api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )

    def upload(self, api: httpx.Client, name: str, data: bytes) -> tuple[dict[str, Any], float]:
        """POST /v1/documents; the answer and ``time.time()`` just before it was sent."""
        submitted = time.time()
        response = api.post("/v1/documents", files={"file": (name, data)})
        if response.status_code not in (200, 202):
            raise RuntimeError(f"upload of {name} answered {response.status_code}: {response.text}")
        return response.json(), submitted

    def wait(self, job_id: str, *, submitted: float, api: httpx.Client, timeout: float = 900) -> JobRun:
        """Read the job's event stream until ``done`` (no polling of the API meanwhile), then GET the job."""
        from protostar.jobs.events import stream_key

        key, last = stream_key(job_id), "0-0"
        events: list[tuple[float, str, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, entries in self.redis.xread({key: last}, block=1000) or []:
                for entry_id, fields in entries:
                    last = entry_id
                    kind = fields[b"type"].decode()
                    events.append((int(entry_id.split(b"-")[0]) / 1000, kind, json.loads(fields[b"data"])))
                    if kind == "done":
                        job = api.get(f"/v1/jobs/{job_id}").json()
                        return JobRun(job, submitted, events)
        where = getattr(self.log, "name", "the processes' log")
        raise RuntimeError(f"job {job_id} did not finish within {timeout} s (see {where})")


def bench_env(data_dir: Path, log_level: str) -> dict[str, str]:
    """The environment of the run: its own data dir and free ports, ONE ingest child per worker."""
    from protostar.runtime.process import free_port

    return {
        "PROTOSTAR_LOG_LEVEL": log_level,
        "PROTOSTAR_DATA_DIR": str(data_dir),
        "PROTOSTAR_REDIS_PORT": str(free_port()),
        "PROTOSTAR_POSTGRES_PORT": str(free_port()),
        "PROTOSTAR_S3_PORT": str(free_port()),
        "PROTOSTAR_API_PORT": str(free_port()),
        "PROTOSTAR_BOOTSTRAP_API_KEY": "ps_bench_" + secrets.token_urlsafe(24),
        "PROTOSTAR_INGEST_CONCURRENCY": "1",
        # Load phases queue thousands of jobs for one tenant faster than anything consumes them: no 429s.
        "PROTOSTAR_TENANT_MAX_QUEUED": "1000000",
        # Ingestion and search never call the LLM: an address where nothing listens keeps the stack from
        # starting its embedded llama-server (RAM and CPU threads this benchmark has no use for).
        "PROTOSTAR_LLM_BASE_URL": "http://127.0.0.1:9/v1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        # The baseline parser reads these as Protostar's parse.warm() sets them (no telemetry, no hub).
        "DO_NOT_TRACK": "1",
        "UNSTRUCTURED_DISABLE_NOTICE": "1",
        "HF_HUB_OFFLINE": "1",
    }


def wait_ready(url: str, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200 within {timeout} s (see {log})")


@contextlib.contextmanager
def launched(
    env: Callable[[Path], dict[str, str]], log_path: Path, *, api_factory: str | None = None
) -> Iterator[System]:
    """Embedded services (llama-server too unless ``env`` names an LLM), migrations, the API, all in a temp
    dir with the environment ``env(data_dir)``; the :class:`System`, stopped and removed on exit, with
    llama-server's log appended to ``log_path``. ``api_factory`` ("module:function") serves a variant of the
    API (a traced one) with the same command."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="protostar-bench-"))
    data_dir.chmod(0o755)  # the embedded PostgreSQL runs as a system user when we run as root
    for var in ("PROTOSTAR_REDIS_URL", "PROTOSTAR_DATABASE_URL", "PROTOSTAR_S3_ENDPOINT", "PROTOSTAR_API_URL"):
        os.environ.pop(var, None)
    for var in ("PROTOSTAR_LLM_BASE_URL", "PROTOSTAR_LLM_API_KEY"):
        os.environ.pop(var, None)
    os.environ.update(env(data_dir))
    from protostar import commands
    from protostar.cli.up import prestart
    from protostar.runtime.stack import Stack
    from protostar.settings import get_settings
    from protostar.supervisor import Supervisor

    get_settings.cache_clear()
    stack = Stack(get_settings())
    supervisor: Any = None
    log = log_path.open("w")
    logging.basicConfig(stream=log, level=logging.INFO, format="bench | %(name)s %(levelname)s %(message)s")
    try:
        stack.start()
        os.environ.update(stack.env())
        get_settings.cache_clear()
        settings = get_settings()
        prestart(settings)
        supervisor = Supervisor(env=dict(os.environ), out=log)
        api = commands.api(settings)
        if api_factory is not None:
            api[api.index("protostar.api.app:create_app")] = api_factory
        supervisor.start("api", api)
        wait_ready(f"{settings.public_api_url}/readyz", 60, log_path)
        assert settings.bootstrap_api_key is not None  # bench_env sets it
        yield System(settings, stack, supervisor, settings.bootstrap_api_key.get_secret_value(), log=log)
    finally:
        if supervisor is not None:
            supervisor.stop_all()
        llm_log = stack.llm.log_file if stack.llm is not None else None
        stack.stop()
        if llm_log is not None and llm_log.exists():
            log.write(f"\n--- llama-server log ({llm_log}) ---\n{llm_log.read_text(errors='replace')}")
        log.close()
        shutil.rmtree(data_dir, ignore_errors=True)
