"""The embedded services as one unit: start those whose URL is not configured, hand out their URLs, stop them.

    with Stack(settings) as stack:
        env = {**os.environ, **stack.env()}   # point child processes at the services

Each service lives under ``data_dir/<service>/``. Generated credentials are kept in ``data_dir/secrets.json``
(0600) so restarts reuse them; other parts may keep their own generated secrets there with ``secret()``.

``env()`` carries the embedded object store's root keys: for the process that runs the stack (the bucket, the
migrations). The processes it starts get scoped key pairs instead (``s3_env``): read and write on the bucket for
the API, read only for the ingest worker, which parses untrusted files.

Start from a long-lived thread: the services die with the thread that spawned them (``PR_SET_PDEATHSIG``).
The processes are launched one after the other from the calling thread, then awaited together, so a cold
start costs about as much as the slowest service.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
from pathlib import Path
from types import TracebackType
from typing import Literal, TypeVar

from protostar.runtime import process
from protostar.runtime.llm import EmbeddedLLM
from protostar.runtime.postgres import EmbeddedPostgres
from protostar.runtime.redis import EmbeddedRedis
from protostar.runtime.s3 import EmbeddedS3, S3User
from protostar.runtime.service import EmbeddedService
from protostar.settings import Settings

logger = logging.getLogger(__name__)

_S = TypeVar("_S", bound=EmbeddedService)

S3Access = Literal["write", "read"]
# What each scoped key pair of the embedded store may do, on the one bucket only (SeaweedFS actions: Write covers
# put and delete; neither may create or list buckets, nor reach another bucket).
S3_ACTIONS: dict[S3Access, tuple[str, ...]] = {"write": ("Read", "Write", "List"), "read": ("Read",)}


class Stack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir.resolve()
        self._secrets: dict[str, str] | None = None
        self._lock = threading.Lock()
        self._services: list[EmbeddedService] | None = None
        self._running: list[EmbeddedService] = []
        self._held_port: socket.socket | None = None  # the deferred LLM's, until it starts

    # --- secrets --------------------------------------------------------------------------------------

    @property
    def secrets_file(self) -> Path:
        return self.data_dir / "secrets.json"

    @property
    def secrets(self) -> dict[str, str]:
        """Every stored secret (a copy; use ``secret()`` to add one)."""
        with self._lock:
            return dict(self._load_secrets())

    def secret(self, name: str) -> str:
        """The secret stored under ``name``, generated and persisted on first use."""
        with self._lock:
            stored = self._load_secrets()
            if name not in stored:
                stored[name] = secrets.token_urlsafe(24)
                process.make_dirs(self.data_dir, traversable=os.geteuid() == 0)
                process.write_private(self.secrets_file, json.dumps(stored, indent=2, sort_keys=True), owner=None)
                logger.info("generated secret %s in %s", name, self.secrets_file)
            return stored[name]

    def _load_secrets(self) -> dict[str, str]:
        if self._secrets is None:
            try:
                self._secrets = dict(json.loads(self.secrets_file.read_text()))
            except FileNotFoundError:
                self._secrets = {}
        return self._secrets

    # --- services -------------------------------------------------------------------------------------

    @property
    def redis(self) -> EmbeddedRedis | None:
        return self._embedded(EmbeddedRedis)

    @property
    def postgres(self) -> EmbeddedPostgres | None:
        return self._embedded(EmbeddedPostgres)

    @property
    def s3(self) -> EmbeddedS3 | None:
        return self._embedded(EmbeddedS3)

    @property
    def llm(self) -> EmbeddedLLM | None:
        return self._embedded(EmbeddedLLM)

    def _embedded(self, kind: type[_S]) -> _S | None:
        return next((s for s in self.services if isinstance(s, kind)), None)

    @property
    def services(self) -> list[EmbeddedService]:
        """The services this stack embeds: those whose URL the settings leave empty. Slowest first."""
        if self._services is None:
            self._services = self._build()
        return self._services

    def _build(self) -> list[EmbeddedService]:
        cfg, host = self.settings, self.settings.host
        built: list[EmbeddedService] = []
        if not cfg.llm_base_url:
            key = cfg.llm_api_key.get_secret_value() if cfg.llm_api_key else self.secret("llm_api_key")
            built.append(
                EmbeddedLLM(
                    data_dir=self.data_dir / "llm",
                    port=cfg.llm_port,
                    host=host,
                    api_key=key,
                    model=cfg.llm_model,
                    model_file=cfg.llm_model_file,
                    threads=cfg.llm_threads,
                    parallel=cfg.llm_parallel,
                    context_tokens=cfg.llm_context_tokens,
                )
            )
        if not cfg.s3_endpoint:
            access = cfg.s3_access_key.get_secret_value() if cfg.s3_access_key else self.secret("s3_access_key")
            secret = cfg.s3_secret_key.get_secret_value() if cfg.s3_secret_key else self.secret("s3_secret_key")
            built.append(
                EmbeddedS3(
                    data_dir=self.data_dir / "s3",
                    port=cfg.s3_port,
                    host=host,
                    access_key=access,
                    secret_key=secret,
                    buckets=(cfg.s3_bucket,),
                    users=tuple(
                        S3User(
                            f"protostar-{access}",
                            self.secret(f"s3_{access}_access_key"),
                            self.secret(f"s3_{access}_secret_key"),
                            tuple(f"{action}:{cfg.s3_bucket}" for action in actions),
                        )
                        for access, actions in S3_ACTIONS.items()
                    ),
                )
            )
        if not cfg.database_url:
            password = self.secret("postgres_password")
            built.append(
                EmbeddedPostgres(
                    data_dir=self.data_dir / "postgres", port=cfg.postgres_port, host=host, password=password
                )
            )
        if not cfg.redis_url:
            password = self.secret("redis_password")
            built.append(
                EmbeddedRedis(
                    data_dir=self.data_dir / "redis",
                    port=cfg.redis_port,
                    host=host,
                    password=password,
                    maxmemory_mb=cfg.redis_maxmemory_mb,
                )
            )
        return built

    def env(self) -> dict[str, str]:
        """The variables that point child processes at the embedded services (only those)."""
        env: dict[str, str] = {}
        if (redis := self.redis) is not None:
            env["PROTOSTAR_REDIS_URL"] = redis.url
        if (postgres := self.postgres) is not None:
            env["PROTOSTAR_DATABASE_URL"] = postgres.url
        if (s3 := self.s3) is not None:
            env["PROTOSTAR_S3_ENDPOINT"] = s3.endpoint
            env["PROTOSTAR_S3_ACCESS_KEY"] = s3.access_key
            env["PROTOSTAR_S3_SECRET_KEY"] = s3.secret_key
        if (llm := self.llm) is not None:
            env["PROTOSTAR_LLM_BASE_URL"] = llm.base_url
            env["PROTOSTAR_LLM_API_KEY"] = llm.api_key
        return env

    def s3_env(self, access: S3Access) -> dict[str, str]:
        """The object-store keys of a process that needs ``access`` to the bucket: the embedded store's scoped
        pair; nothing when the store is external (the configured keys stand: scope them there)."""
        s3 = self.s3
        user = next((u for u in s3.users if u.name == f"protostar-{access}"), None) if s3 is not None else None
        if user is None:
            return {}
        return {"PROTOSTAR_S3_ACCESS_KEY": user.access_key, "PROTOSTAR_S3_SECRET_KEY": user.secret_key}

    def pids(self) -> dict[str, int]:
        return {s.name: pid for s in self._running if (pid := s.pid) is not None}

    # --- life cycle -----------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0, *, defer_llm: bool = False) -> None:
        """Start every embedded service and wait until each answers. On failure, stop those started.

        ``defer_llm``: all but the LLM, which ``start_llm`` starts later (``protostar up`` serves everything
        else while llama-server is still being built). Its port is checked now all the same, and held (bound,
        not listening) until then, so that nothing else takes it meanwhile.
        """
        if self._running:
            return
        for service in self.services:  # all ports first: fail before anything runs
            process.ensure_port_free(service.host, service.port, service.name)
        services = [s for s in self.services if not (defer_llm and isinstance(s, EmbeddedLLM))]
        if defer_llm and (llm := self.llm) is not None:
            self._held_port = process.hold_port(llm.host, llm.port)
        process.make_dirs(self.data_dir, traversable=os.geteuid() == 0)
        try:
            for service in services:
                service.launch()
                self._running.append(service)
            for service in services:
                service.wait_ready(timeout)
        except BaseException:
            logger.error("the embedded services did not start; stopping those that did")
            self.stop()
            raise
        logger.info("embedded services ready: %s", ", ".join(s.name for s in services) or "none")

    def start_llm(self, timeout: float = 60.0) -> None:
        """Start the embedded LLM deferred by ``start(defer_llm=True)`` and wait until it answers."""
        llm = self.llm
        if llm is None or llm in self._running:
            return
        self._release_port()
        self._running.append(llm)
        try:
            llm.start(timeout)
        except BaseException:
            self._running.remove(llm)
            llm.stop()
            raise

    def _release_port(self) -> None:
        if self._held_port is not None:
            self._held_port.close()
            self._held_port = None

    def stop(self) -> None:
        """Stop the running services in reverse order. Never raises."""
        self._release_port()
        while self._running:
            service = self._running.pop()
            try:
                service.stop()
            except Exception:
                logger.exception("could not stop the embedded %s", service.name)

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
