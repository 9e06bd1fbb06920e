"""``protostar up``: the embedded services, migrations, then the API, the workers, beat and Flower in the
foreground, the embedded LLM built and started in the background; Ctrl-C stops everything."""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.error import HTTPError, URLError

from protostar import commands
from protostar.constants import Queue
from protostar.errors import ServiceError
from protostar.settings import Settings

if TYPE_CHECKING:
    from protostar.runtime.llm_launch import Launcher
    from protostar.runtime.stack import S3Access, Stack
    from protostar.supervisor import Supervisor


def resolved_settings(settings: Settings, env: dict[str, str]) -> Settings:
    """Settings as a child process will see them once ``env`` is applied."""
    overrides = {k.removeprefix("PROTOSTAR_").lower(): v for k, v in env.items() if k.startswith("PROTOSTAR_")}
    return Settings(**{**settings.model_dump(exclude_unset=True), **overrides})


def prestart(settings: Settings) -> None:
    """Migrations, the bucket and the local embedding model's ONNX file: what must exist before any process
    serves."""
    from protostar.db.migrate import upgrade
    from protostar.embeddings.embed import prepare_local_model
    from protostar.embeddings.index import ensure_configured_index
    from protostar.storage import ensure_bucket, make_minio

    assert settings.database_url
    upgrade(settings.database_url)
    ensure_configured_index(settings)
    ensure_bucket(make_minio(settings), settings.s3_bucket)
    prepare_local_model(settings)  # once, here, rather than in the first process to embed


def _wait_http(url: str, timeout: float, *, ok: tuple[int, ...] = (200,), between: Callable[[], None]) -> bool:
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
        between()
        time.sleep(0.2)
    return False


def _wait_workers(settings: Settings, names: list[str], timeout: float, between: Callable[[], None]) -> dict[str, str]:
    """Until every worker answers a ping, so Flower's first look finds them all: their node names by name."""
    from protostar.jobs.broker import create_celery

    control = create_celery(settings, role="api").control
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while time.monotonic() < deadline and not set(names) <= set(seen):
        replies = control.ping(timeout=1.0) or []
        seen.update({node.split("@")[0]: node for reply in replies for node in reply})
        between()
    return seen


# The queues whose jobs call the LLM. While the embedded LLM is being built their workers do not consume them:
# the jobs wait in the broker, and run once it answers.
_LLM_QUEUES = (Queue.CHAT, Queue.SUMMARY)


def _start_workers(supervisor: Supervisor, settings: Settings, *, llm_ready: bool) -> None:
    """The workers; before the LLM is ready, only what runs without it (ingest and maintenance)."""
    for name, spec in commands.WORKERS.items():
        argv = commands.worker(settings, name)
        waiting = [q for q in spec.queues if q in _LLM_QUEUES]
        if not llm_ready and waiting:
            if len(waiting) == len(spec.queues):
                continue  # started by _llm_ready
            argv += ["--exclude-queues", ",".join(q.value for q in waiting)]
        supervisor.start(f"worker-{name}", argv)


def _llm_ready(supervisor: Supervisor, settings: Settings, nodes: dict[str, str]) -> None:
    """The LLM answers: start the workers left out, and have the others (``nodes``) consume their LLM queues
    (and get every queue when they restart)."""
    from protostar.jobs.broker import create_celery

    for name, spec in commands.WORKERS.items():
        if all(q in _LLM_QUEUES for q in spec.queues):
            supervisor.start(f"worker-{name}", commands.worker(settings, name))
    control = create_celery(settings, role="api").control
    for name, spec in commands.WORKERS.items():
        queues = [q for q in spec.queues if q in _LLM_QUEUES]
        if not queues or len(queues) == len(spec.queues):
            continue
        supervisor.reconfigure(f"worker-{name}", commands.worker(settings, name))
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
                "9 minutes on 2 cores; progress in the 'llm-build' lines and at /readyz). Chat and summary "
                "jobs wait queued and run once it is ready"
            )


def cmd_up(settings: Settings) -> int:
    """Start everything, then look after it until a stop signal (0) or a process that keeps dying (1)."""
    from protostar.runtime.signals import Interrupted, stop_signals
    from protostar.runtime.stack import Stack
    from protostar.supervisor import RestartPolicy, Supervisor

    # First of all: from here on a stop signal, at any moment of the start-up too, stops everything.
    with stop_signals() as signals:
        stack = Stack(settings)
        supervisor = Supervisor(env={}, policy=RestartPolicy.from_settings(settings))
        launcher: list[Launcher] = []  # filled once the LLM's install begins, for the clean-up
        try:
            gave_up = _up(settings, stack, supervisor, launcher)
        except Interrupted as exc:
            signals.disarm()
            supervisor.say(f"{exc} during the start-up: stopping everything")
            return 0
        finally:
            signals.disarm()  # a second Ctrl-C must not cut the stop short (it is bounded anyway)
            for each in launcher:
                each.stop()
            supervisor.stop_all()
            stack.stop()
        return 0 if gave_up is None else 1


def _up(settings: Settings, stack: Stack, supervisor: Supervisor, launcher: list[Launcher]) -> str | None:
    """Start, then supervise; the name of the process we gave up on, or None after a stop signal."""
    from protostar.client import ClientConfig

    stack.start(defer_llm=True)
    supervisor.check()  # also raises a stop signal noted during a fork (see runtime.signals)
    for service in stack.services:
        if service.pid is not None:
            supervisor.watch(service)
    env = {**os.environ, **stack.env()}
    if settings.bootstrap_api_key is None:
        env["PROTOSTAR_BOOTSTRAP_API_KEY"] = "ps_" + stack.secret("bootstrap_api_key")
    flower_password = (
        settings.flower_password.get_secret_value() if settings.flower_password else stack.secret("flower_password")
    )
    resolved = resolved_settings(settings, env)
    prestart(resolved)  # with the root keys of the object store, here only
    supervisor.env = env
    s3_keys: dict[S3Access, dict[str, str]] = {"write": stack.s3_env("write"), "read": stack.s3_env("read")}
    supervisor.scope = lambda name, program_env: commands.environment(name, program_env, s3_keys)
    llm = _begin_llm(stack, resolved, supervisor)
    launcher += [llm] if llm is not None else []
    supervisor.check()
    between = _looker(supervisor)  # what dies during the start-up is restarted as later
    supervisor.start("api", commands.api(resolved))
    _start_workers(supervisor, resolved, llm_ready=llm is None)
    supervisor.start("beat", commands.beat(resolved))
    names = [n.removeprefix("worker-") for n in supervisor.names() if n.startswith("worker-")]
    nodes = _wait_workers(resolved, names, 90, between)
    if not set(names) <= set(nodes):
        supervisor.say("not every worker answered within 90 s; see their logs above")
    supervisor.start("flower", commands.flower(resolved), commands.flower_env(resolved, flower_password))
    api = resolved.public_api_url
    if not _wait_http(f"{api}/readyz", 60, between=between):
        supervisor.say("the API is not ready after 60 s; see its log above")
    flower_url = f"http://{resolved.host}:{resolved.flower_port}"
    if not _wait_http(f"{flower_url}/healthcheck", 30, ok=(200, 401), between=between):
        supervisor.say("Flower did not answer within 30 s; see its log above")
    tick = _llm_tick(llm, stack, supervisor, resolved, nodes)
    if tick is not None:
        tick()  # already installed: ready within seconds
    key = env["PROTOSTAR_BOOTSTRAP_API_KEY"]
    ClientConfig(api, key).save(resolved.data_dir / "client.json")  # mode 0600; `protostar ask` reads it
    where = "PROTOSTAR_FLOWER_PASSWORD" if settings.flower_password else f"flower_password in {stack.secrets_file}"
    supervisor.say(_banner(resolved, api, key, flower_url, where, _llm_line(llm, resolved)))
    gave_up = supervisor.wait(tick=tick)  # on giving up, it said so
    if gave_up is None:
        supervisor.say("stopping...")
    return gave_up


def _looker(supervisor: Supervisor) -> Callable[[], None]:
    def look() -> None:
        if (name := supervisor.check()) is not None:
            raise ServiceError(f"{name} keeps dying; stopped everything (see its log above)")

    return look


def _banner(settings: Settings, api: str, key: str, flower_url: str, flower_password_at: str, llm: str) -> str:
    """What the operator needs: the API key, once (its only secret shown); where Flower's password is kept
    (``flower_password_at``), never a stored secret itself (Redis, PostgreSQL, object store, LLM, Flower)."""
    return (
        "\n"
        f"  Protostar is up.\n"
        f"  API          {api}\n"
        f"  API docs     {api}/docs\n"
        f"  API key      {key}   (tenant 'default', admin)\n"
        f"  Flower       {flower_url}  "
        f"(user {settings.flower_user}, password: {flower_password_at})\n"
        f"  LLM          {llm}\n"
        f"  Data         {_data_line(settings)}\n"
        "  Try:  export PROTOSTAR_KEY=<the API key above>\n"
        f'        curl -H "Authorization: Bearer $PROTOSTAR_KEY" -F file=@report.pdf {api}/v1/documents\n'
        f'        curl -H "Authorization: Bearer $PROTOSTAR_KEY" -X POST {api}/v1/sessions\n'
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
    launcher: Launcher | None, stack: Stack, supervisor: Supervisor, settings: Settings, nodes: dict[str, str]
) -> Callable[[], None] | None:
    if launcher is None:
        return None

    def tick() -> None:
        if launcher.poll():
            if stack.llm is not None:
                supervisor.watch(stack.llm)
            _llm_ready(supervisor, settings, nodes)
            supervisor.say(
                f"\n  The embedded LLM is ready ({settings.llm_base_url}, model {settings.llm_model}): "
                "chat and summary jobs run now.\n"
            )

    return tick
