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
import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING
from urllib.error import HTTPError, URLError

from protostar import commands
from protostar.constants import Queue
from protostar.errors import ProtostarError
from protostar.logs import setup_logging
from protostar.settings import Settings, get_settings

if TYPE_CHECKING:
    from protostar.runtime.llm_launch import Launcher
    from protostar.runtime.stack import Stack
    from protostar.supervisor import Supervisor

logger = logging.getLogger("protostar")

USER_COMMANDS = frozenset({"ingest", "search", "ask", "chat", "jobs", "documents"})  # protostar.console's


def _resolved(settings: Settings, env: dict[str, str]) -> Settings:
    """Settings as a child process will see them once ``env`` is applied."""
    overrides = {k.removeprefix("PROTOSTAR_").lower(): v for k, v in env.items() if k.startswith("PROTOSTAR_")}
    return Settings(**{**settings.model_dump(exclude_unset=True), **overrides})


def prestart(settings: Settings) -> None:
    """Migrations and the bucket: what must exist before any process serves."""
    from protostar.db.migrate import upgrade
    from protostar.embeddings.index import ensure_configured_index
    from protostar.storage import ensure_bucket, make_minio

    assert settings.database_url
    upgrade(settings.database_url)
    ensure_configured_index(settings)
    ensure_bucket(make_minio(settings), settings.s3_bucket)


def _wait_http(url: str, timeout: float, *, ok: tuple[int, ...] = (200,)) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 (a local URL we built)
                if response.status in ok:
                    return True
        except HTTPError as exc:
            if exc.code in ok:
                return True
        except (URLError, OSError):
            pass
        time.sleep(0.2)
    return False


def _wait_workers(settings: Settings, names: list[str], timeout: float) -> dict[str, str]:
    """Until every worker answers a ping, so Flower's first look finds them all: their node names by name."""
    from protostar.jobs.broker import create_celery

    control = create_celery(settings, role="api").control
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while time.monotonic() < deadline and not set(names) <= set(seen):
        replies = control.ping(timeout=1.0) or []
        seen.update({node.split("@")[0]: node for reply in replies for node in reply})
    return seen


# The queues whose jobs call the LLM. While the embedded LLM is being built their workers do not consume them:
# the jobs wait in the broker, and run once it answers.
_LLM_QUEUES = (Queue.CHAT, Queue.SUMMARY)


def _start_workers(supervisor: Supervisor, settings: Settings, *, llm_ready: bool) -> None:
    """The workers; before the LLM is ready, only what runs without it (the summary worker's maintenance)."""
    for name, spec in commands.WORKERS.items():
        argv = commands.worker(settings, name)
        waiting = [q for q in spec.queues if q in _LLM_QUEUES]
        if not llm_ready and waiting:
            if len(waiting) == len(spec.queues):
                continue  # started by _llm_ready
            argv += ["--exclude-queues", ",".join(q.value for q in waiting)]
        supervisor.start(f"worker-{name}", argv)


def _llm_ready(supervisor: Supervisor, settings: Settings, nodes: dict[str, str]) -> None:
    """The LLM answers: start the workers left out, and have the others (``nodes``) consume their LLM queues."""
    from protostar.jobs.broker import create_celery

    for name, spec in commands.WORKERS.items():
        if all(q in _LLM_QUEUES for q in spec.queues):
            supervisor.start(f"worker-{name}", commands.worker(settings, name))
    control = create_celery(settings, role="api").control
    for name, spec in commands.WORKERS.items():
        queues = [q for q in spec.queues if q in _LLM_QUEUES]
        if not queues or len(queues) == len(spec.queues):
            continue
        for queue in queues:
            node = nodes.get(name)
            replies = control.add_consumer(queue.value, destination=[node], reply=True, timeout=5.0) if node else []
            if not replies:
                supervisor.say(f"worker-{name} did not confirm consuming {queue.value}; restart protostar up")


def _llm_line(launcher: Launcher | None, settings: Settings) -> str:
    from protostar.runtime.llm_state import LLMState

    if launcher is None:
        return f"{settings.llm_base_url}  (model {settings.llm_model}, external)"
    match launcher.state:
        case LLMState.READY:
            return f"{settings.llm_base_url}  (model {settings.llm_model})"
        case LLMState.FAILED:
            return f"FAILED: {launcher.detail}"
        case _:
            return (
                "being installed in the background (the first time on a machine llama-server compiles: about "
                "13 minutes on 2 cores; progress in the 'llm-build' lines and at /readyz). Chat and summary "
                "jobs wait queued and run once it is ready"
            )


def cmd_up(settings: Settings) -> int:
    from protostar.client import ClientConfig
    from protostar.runtime.stack import Stack
    from protostar.supervisor import Supervisor

    stack = Stack(settings)
    supervisor: Supervisor | None = None
    launcher: Launcher | None = None
    try:
        stack.start(defer_llm=True)
        env = {**os.environ, **stack.env()}
        if settings.bootstrap_api_key is None:
            env["PROTOSTAR_BOOTSTRAP_API_KEY"] = "ps_" + stack.secret("bootstrap_api_key")
        flower_password = (
            settings.flower_password.get_secret_value() if settings.flower_password else stack.secret("flower_password")
        )
        resolved = _resolved(settings, env)
        prestart(resolved)
        supervisor = Supervisor(env=env)
        launcher = _begin_llm(stack, resolved, supervisor)
        supervisor.start("api", commands.api(resolved))
        _start_workers(supervisor, resolved, llm_ready=launcher is None)
        supervisor.start("beat", commands.beat(resolved))
        names = [p.removeprefix("worker-") for p, _ in supervisor.procs if p.startswith("worker-")]
        nodes = _wait_workers(resolved, names, 90)
        if not set(names) <= set(nodes):
            supervisor.say("not every worker answered within 90 s; see their logs above")
        supervisor.start("flower", commands.flower(resolved), commands.flower_env(resolved, flower_password))
        api = resolved.public_api_url
        if not _wait_http(f"{api}/readyz", 60):
            supervisor.say("the API is not ready after 60 s; see its log above")
        flower_url = f"http://{resolved.host}:{resolved.flower_port}"
        if not _wait_http(f"{flower_url}/healthcheck", 30, ok=(200, 401)):
            supervisor.say("Flower did not answer within 30 s; see its log above")
        if launcher is not None and launcher.poll():  # already installed: ready within seconds
            _llm_ready(supervisor, resolved, nodes)
        key = env["PROTOSTAR_BOOTSTRAP_API_KEY"]
        ClientConfig(api, key).save(resolved.data_dir / "client.json")  # mode 0600; `protostar ask` reads it
        supervisor.say(_banner(resolved, api, key, flower_url, flower_password, _llm_line(launcher, resolved)))
        exited = supervisor.wait(tick=_llm_tick(launcher, supervisor, resolved, nodes))
        if exited:
            supervisor.say(f"{exited} exited; stopping everything")
            return 1
        supervisor.say("stopping...")
        return 0
    finally:
        if launcher is not None:
            launcher.stop()
        if supervisor is not None:
            supervisor.stop_all()
        stack.stop()


def _banner(settings: Settings, api: str, key: str, flower_url: str, flower_password: str, llm: str) -> str:
    return (
        "\n"
        f"  Protostar is up.\n"
        f"  API          {api}\n"
        f"  API docs     {api}/docs\n"
        f"  API key      {key}   (tenant 'default', admin)\n"
        f"  Flower       {flower_url}  "
        f"(user {settings.flower_user}, password {flower_password})\n"
        f"  LLM          {llm}\n"
        f"  Data         {_data_line(settings)}\n"
        f"  Try:  curl -H 'Authorization: Bearer {key}' -F file=@report.pdf {api}/v1/documents\n"
        f"        curl -H 'Authorization: Bearer {key}' -X POST {api}/v1/sessions\n"
        "  Ctrl-C stops everything.\n"
    )


def _data_line(settings: Settings) -> str:
    """The data dir, and where parts of it really live (as root, PostgreSQL's data under /var/lib/protostar)."""
    data = settings.data_dir.resolve()
    placed = sorted(p for p in data.iterdir() if p.is_symlink()) if data.is_dir() else []
    elsewhere = "".join(f"\n               {p.name}/ -> {p.resolve()}  (for the system user)" for p in placed)
    return f"{data}{elsewhere}"


def _begin_llm(stack: Stack, settings: Settings, supervisor: Supervisor) -> Launcher | None:
    """Start installing and then serving the embedded LLM in the background; None when it is external."""
    import redis

    from protostar.runtime.llm_launch import Launcher, installer_command
    from protostar.runtime.llm_state import LLMState, write_state

    client = redis.Redis.from_url(settings.redis_url or "", socket_timeout=5)
    if stack.llm is None:
        write_state(client, LLMState.EXTERNAL, detail=settings.llm_base_url or "", since=time.time(), ttl=None)
        return None
    launcher = Launcher(stack, client, installer=installer_command(), say=supervisor.say)
    launcher.begin()
    return launcher


def _llm_tick(
    launcher: Launcher | None, supervisor: Supervisor, settings: Settings, nodes: dict[str, str]
) -> Callable[[], None] | None:
    if launcher is None:
        return None

    def tick() -> None:
        if launcher.poll():
            _llm_ready(supervisor, settings, nodes)
            supervisor.say(
                f"\n  The embedded LLM is ready ({settings.llm_base_url}, model {settings.llm_model}): "
                "chat and summary jobs run now.\n"
            )

    return tick


def cmd_services(settings: Settings) -> int:
    from protostar.runtime.stack import Stack
    from protostar.supervisor import Supervisor

    with Stack(settings) as stack:
        for name, value in stack.env().items():
            print(f"export {name}={value}")
        Supervisor(env={}).wait()
    return 0


def _admin_settings(settings: Settings) -> Settings:
    """Settings for admin commands: external URLs as configured, else the embedded stack's."""
    from protostar.runtime.stack import Stack

    return _resolved(settings, Stack(settings).env())


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


if __name__ == "__main__":
    sys.exit(main())
