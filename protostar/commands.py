"""The command line of every Protostar process, in one place.

``protostar up``, the ``Procfile`` (``protostar api``, ``protostar worker chat``...) and the Docker image
all run these. A worker's queues and pool come from the job-kind table (``jobs.kinds.WORKERS``), its
concurrency from ``Settings.worker_concurrency``.
"""

from __future__ import annotations

import sys

from protostar.jobs.kinds import WORKERS
from protostar.settings import Settings

CELERY_APP = "protostar.worker.app"

__all__ = ["WORKERS", "api", "beat", "flower", "flower_env", "worker"]  # WORKERS: the processes `up` runs


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
