"""The command line of every Protostar process, in one place.

``protostar up``, the ``Procfile`` (``protostar api``, ``protostar worker chat``...) and the Docker image
all run these. A worker's queues and pool come from the job-kind table (``jobs.kinds.WORKERS``), its
concurrency from ``Settings.worker_concurrency``.

And the secrets each process gets (``SECRETS``, ``environment``): only those it uses. Every process needs the
Redis and PostgreSQL URLs (and their passwords); beyond that the API alone gets the bootstrap admin key, Flower
alone its password, the LLM key goes to the workers that call the LLM, the object store's keys to the API
(read and write) and the ingest worker (read only) and nobody else. The ingest worker parses untrusted files: a
parser exploited there finds neither an admin key nor a key that can write or delete stored documents.
docker-compose.yml gives each container the same sets.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass

from protostar.jobs.kinds import WORKERS
from protostar.runtime.stack import S3Access
from protostar.settings import Settings

CELERY_APP = "protostar.worker.app"

__all__ = [  # WORKERS: the processes `up` runs
    "SECRETS",
    "WORKERS",
    "Secrets",
    "api",
    "beat",
    "environment",
    "flower",
    "flower_env",
    "worker",
]


@dataclass(frozen=True)
class Secrets:
    """The secrets a process uses (besides the Redis and PostgreSQL URLs, which every process needs)."""

    s3: S3Access | None = None  # access to the bucket
    api_key: bool = False  # the bootstrap admin key
    llm: bool = False
    embedding: bool = False  # the embedding API's key (PROTOSTAR_EMBEDDING_PROVIDER=openai)
    flower: bool = False


SECRETS: dict[str, Secrets] = {
    "api": Secrets(s3="write", api_key=True, embedding=True),
    "worker-ingest": Secrets(s3="read", embedding=True),
    "worker-chat": Secrets(llm=True, embedding=True),
    "worker-summary": Secrets(llm=True),
    "worker-maintenance": Secrets(),
    "worker-webhooks": Secrets(),  # the endpoints' signing secrets are rows it reads, not environment
    "beat": Secrets(),
    "flower": Secrets(flower=True),
}

_S3_VARS = ("PROTOSTAR_S3_ACCESS_KEY", "PROTOSTAR_S3_SECRET_KEY")
_VARS = {
    "api_key": ("PROTOSTAR_BOOTSTRAP_API_KEY",),
    "llm": ("PROTOSTAR_LLM_API_KEY",),
    "embedding": ("PROTOSTAR_EMBEDDING_API_KEY",),
    "flower": ("PROTOSTAR_FLOWER_PASSWORD", "FLOWER_BASIC_AUTH"),
}


def environment(
    name: str, env: Mapping[str, str], s3_keys: Mapping[S3Access, Mapping[str, str]] | None = None
) -> dict[str, str]:
    """``env`` for the process ``name`` (a key of ``SECRETS``, or another instance of one named after it, such
    as ``api-2``; any other gets no secret): the secrets it does not use left out, the object store's keys
    replaced by ``s3_keys[access]`` when given (the embedded store's scoped pairs, ``Stack.s3_env``)."""
    needs = _secrets_of(name)
    dropped = {var for field, names in _VARS.items() if not getattr(needs, field) for var in names}
    if needs.s3 is None:
        dropped.update(_S3_VARS)
    scoped = {k: v for k, v in env.items() if k not in dropped}
    if needs.s3 is not None and s3_keys is not None:
        scoped.update(s3_keys.get(needs.s3, {}))
    return scoped


def _secrets_of(name: str) -> Secrets:
    """The secrets of process ``name``: its own entry, else the longest entry it is an instance of."""
    for key in sorted(SECRETS, key=len, reverse=True):
        if name == key or name.startswith(f"{key}-"):
            return SECRETS[key]
    return Secrets()


def _celery(command: str) -> list[str]:
    """``python -m celery -A <app> <command>`` with this interpreter, so the venv's Celery runs."""
    return [sys.executable, "-m", "celery", "-A", CELERY_APP, command]


def api(settings: Settings) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "protostar.api.app:create_app",
        "--factory",
        "--host",
        settings.host,
        "--port",
        str(settings.api_port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--timeout-graceful-shutdown",
        "5",
    ]


def worker(settings: Settings, name: str) -> list[str]:
    spec = WORKERS[name]
    concurrency = settings.worker_concurrency[name]
    argv = [
        *_celery("worker"),
        "--hostname",
        f"{name}@%h",
        "--queues",
        ",".join(q.value for q in spec.queues),
        "--pool",
        spec.pool,
        "--concurrency",
        str(concurrency),
        "--loglevel",
        settings.log_level,
        "--task-events",
        "--without-gossip",
        "--without-mingle",
    ]
    if spec.pool == "prefork":
        argv += [
            "--max-tasks-per-child",
            str(settings.max_tasks_per_child),
            "--max-memory-per-child",
            str(settings.max_memory_per_child_kb),
        ]
    return argv


def beat(settings: Settings) -> list[str]:
    schedule = settings.data_dir.resolve() / "celerybeat-schedule"
    return [
        *_celery("beat"),
        "--schedule",
        str(schedule),
        "--loglevel",
        settings.log_level,
    ]


def flower(settings: Settings) -> list[str]:
    """Flower; its basic-auth credentials go in ``FLOWER_BASIC_AUTH`` (see :func:`flower_env`), not argv."""
    return [
        *_celery("flower"),
        f"--address={settings.host}",  # Tornado options take --name=value only
        f"--port={settings.flower_port}",
        "--persistent=False",
    ]


def flower_env(settings: Settings, password: str) -> dict[str, str]:
    return {"FLOWER_BASIC_AUTH": f"{settings.flower_user}:{password}"}
