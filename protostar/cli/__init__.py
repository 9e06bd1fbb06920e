"""``protostar``: run the whole system, or one of its processes, and administer it.

protostar up                      embedded services + migrations + API, workers, beat, Flower
protostar services                only the embedded services (Redis, PostgreSQL, S3), in the foreground
protostar api | beat | flower     one process, as the Procfile and the Docker image run it
protostar worker ingest|chat|summary
protostar migrate                 apply migrations and create the bucket
protostar keys create --tenant NAME [--admin]
protostar keys list [--tenant NAME]
protostar keys revoke KEY_ID

protostar ingest|search|ask|chat|jobs|documents ...   the user CLI on the API (`protostar ask --help`)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from protostar import commands
from protostar.cli.up import cmd_up, prestart, resolved_settings
from protostar.errors import ProtostarError
from protostar.logs import setup_logging
from protostar.settings import Settings, get_settings

if TYPE_CHECKING:
    pass

logger = logging.getLogger("protostar")

USER_COMMANDS = frozenset({"ingest", "search", "ask", "chat", "jobs", "documents"})  # protostar.console's


def cmd_services(settings: Settings) -> int:
    from protostar.runtime.stack import Stack
    from protostar.supervisor import RestartPolicy, Supervisor

    with Stack(settings) as stack:
        for name, value in stack.env().items():
            print(f"export {name}={value}")
        supervisor = Supervisor(env={}, policy=RestartPolicy.from_settings(settings))
        for service in stack.services:
            supervisor.watch(service)
        gave_up = supervisor.wait()
        supervisor.stop_all()
    return 0 if gave_up is None else 1


def _admin_settings(settings: Settings) -> Settings:
    """Settings for admin commands: external URLs as configured, else the embedded stack's."""
    from protostar.runtime.stack import Stack

    return resolved_settings(settings, Stack(settings).env())


def cmd_migrate(settings: Settings) -> int:
    prestart(_admin_settings(settings))
    print("migrations applied")
    return 0


def cmd_keys_create(settings: Settings, tenant: str, admin: bool) -> int:
    from protostar.auth import create_key
    from protostar.db.engine import make_engine, make_sessionmaker

    engine = make_engine(_admin_settings(settings), pool_size=1)
    with make_sessionmaker(engine).begin() as session:
        key = create_key(session, tenant=tenant, admin=admin)
    engine.dispose()
    print(key)
    return 0


def cmd_keys_list(settings: Settings, tenant: str | None) -> int:
    from protostar.auth import list_keys
    from protostar.db.engine import make_engine, make_sessionmaker

    engine = make_engine(_admin_settings(settings), pool_size=1)
    with make_sessionmaker(engine)() as session:
        keys = [k for k in list_keys(session, limit=100_000) if tenant is None or k.tenant == tenant]
    engine.dispose()
    print(f"{'id':36}  {'tenant':20}  {'prefix':10}  {'admin':5}  {'created':19}  revoked")
    for k in keys:
        revoked = f"{k.revoked_at:%Y-%m-%d %H:%M:%S}" if k.revoked_at else "-"
        print(
            f"{k.id!s:36}  {k.tenant[:20]:20}  {k.prefix:10}  {'yes' if k.is_admin else 'no':5}  "
            f"{k.created_at:%Y-%m-%d %H:%M:%S}  {revoked}"
        )
    return 0


def cmd_keys_revoke(settings: Settings, key_id: str) -> int:
    import uuid

    from protostar.auth import revoke_key
    from protostar.db.engine import make_engine, make_sessionmaker

    try:
        parsed = uuid.UUID(key_id)
    except ValueError:
        print(f"protostar: {key_id!r} is not a key id (see `protostar keys list`)", file=sys.stderr)
        return 2
    import redis

    resolved = _admin_settings(settings)
    assert resolved.redis_url
    client = redis.Redis.from_url(resolved.redis_url, socket_connect_timeout=5, socket_timeout=10)
    engine = make_engine(resolved, pool_size=1)
    with make_sessionmaker(engine).begin() as session:
        key = revoke_key(session, client, key_id=parsed)  # API processes drop it from their caches at once
    engine.dispose()
    client.close()
    print(f"revoked {key.id} ({key.prefix}..., tenant {key.tenant}) at {key.revoked_at:%Y-%m-%d %H:%M:%S}")
    return 0


def _keys(settings: Settings, args: argparse.Namespace) -> int:
    match args.keys_command:
        case "list":
            return cmd_keys_list(settings, args.tenant)
        case "revoke":
            return cmd_keys_revoke(settings, args.key_id)
    return cmd_keys_create(settings, args.tenant, args.admin)


def _exec(argv: list[str], extra_env: dict[str, str] | None = None) -> int:
    os.execve(argv[0], argv, {**os.environ, **(extra_env or {})})  # noqa: S606 (become the process)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="protostar", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the whole system on embedded services")
    sub.add_parser("services", help="start only the embedded services")
    sub.add_parser("api", help="run the HTTP API (uvicorn)")
    w = sub.add_parser("worker", help="run a Celery worker")
    w.add_argument("name", choices=sorted(commands.WORKERS))
    sub.add_parser("beat", help="run celery beat")
    sub.add_parser("flower", help="run Flower (basic auth from PROTOSTAR_FLOWER_USER/PASSWORD)")
    sub.add_parser("migrate", help="apply migrations and create the bucket")
    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create an API key and print it once")
    create.add_argument("--tenant", required=True)
    create.add_argument("--admin", action="store_true")
    listing = keys.add_parser("list", help="list API keys (never the keys themselves), newest first")
    listing.add_argument("--tenant", help="only this tenant's keys")
    revoke = keys.add_parser("revoke", help="revoke an API key: it answers 401 from its next request on")
    revoke.add_argument("key_id", help="the key's id, as `protostar keys list` shows it")
    return p


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911, PLR0912 (one return per command)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in USER_COMMANDS:
        from protostar.console import run  # the user CLI, on the client

        return run(argv)
    args = parser().parse_args(argv)
    try:
        settings = get_settings()
    except ValueError as exc:
        print(f"protostar: invalid settings: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    try:
        match args.command:
            case "up":
                return cmd_up(settings)
            case "services":
                return cmd_services(settings)
            case "api":
                return _exec(commands.api(settings))
            case "worker":
                return _exec(commands.worker(settings, args.name))
            case "beat":
                settings.data_dir.mkdir(parents=True, exist_ok=True)  # beat keeps its schedule state there
                return _exec(commands.beat(settings))
            case "flower":
                if settings.flower_password is None:
                    print("protostar: set PROTOSTAR_FLOWER_PASSWORD", file=sys.stderr)
                    return 2
                password = settings.flower_password.get_secret_value()
                return _exec(commands.flower(settings), commands.flower_env(settings, password))
            case "migrate":
                return cmd_migrate(settings)
            case "keys":
                return _keys(settings, args)
    except ProtostarError as exc:
        print(f"protostar: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2
