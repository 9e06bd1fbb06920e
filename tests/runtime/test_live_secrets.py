"""On the live stack, each process the supervisor started holds only the secrets it uses (read from
``/proc/<pid>/environ``, as an attacker who took the process over would), and no process logs a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Live


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


@pytest.fixture(scope="module")
def envs(live: Live) -> dict[str, dict[str, str]]:
    found = {}
    for name in live.supervisor.names():
        pid = live.supervisor.pid(name)
        assert pid is not None, f"{name} is not running"
        found[name] = environ(pid)
    return found


def test_the_ingest_worker_has_no_admin_key_no_flower_password_and_only_a_read_key(
    live: Live, envs: dict[str, dict[str, str]]
) -> None:
    ingest = envs["worker-ingest"]
    assert "PROTOSTAR_BOOTSTRAP_API_KEY" not in ingest
    assert live.admin_key not in "".join(ingest.values())
    assert not {"PROTOSTAR_FLOWER_PASSWORD", "FLOWER_BASIC_AUTH", "PROTOSTAR_LLM_API_KEY"} & set(ingest)
    root = live.stack.env()["PROTOSTAR_S3_ACCESS_KEY"], live.stack.env()["PROTOSTAR_S3_SECRET_KEY"]
    assert not set(root) & set(ingest.values())
    read = live.stack.s3_env("read")
    assert (ingest["PROTOSTAR_S3_ACCESS_KEY"], ingest["PROTOSTAR_S3_SECRET_KEY"]) == (
        read["PROTOSTAR_S3_ACCESS_KEY"],
        read["PROTOSTAR_S3_SECRET_KEY"],
    )


def test_each_process_holds_only_its_secrets(live: Live, envs: dict[str, dict[str, str]]) -> None:
    stored = live.stack.secrets  # every secret of the embedded stack (data_dir/secrets.json)
    root_s3 = {stored["s3_access_key"], stored["s3_secret_key"]}
    for name, env in envs.items():
        values = set(env.values())
        assert not root_s3 & values, f"{name} holds the object store's root keys"
        assert "FLOWER_BASIC_AUTH" not in env and "PROTOSTAR_FLOWER_PASSWORD" not in env, name
        assert env["PROTOSTAR_REDIS_URL"] == live.settings.redis_url, name  # every process needs Redis...
        assert env["PROTOSTAR_DATABASE_URL"] == live.settings.database_url, name  # ...and PostgreSQL
        has = {
            "admin key": env.get("PROTOSTAR_BOOTSTRAP_API_KEY") == live.admin_key,
            "llm key": stored["llm_api_key"] in values,
            "s3 write key": stored["s3_write_secret_key"] in values,
            "s3 read key": stored["s3_read_secret_key"] in values,
        }
        expected = {
            "api": {"admin key", "s3 write key"},
            "worker-ingest": {"s3 read key"},
            "worker-chat": {"llm key"},
            "worker-summary": {"llm key"},
        }.get(name, set())
        assert {what for what, held in has.items() if held} == expected, name


def test_no_process_logs_a_secret(live: Live) -> None:
    """The live log (every process's output) carries no stored secret, no admin key and no Redis URL."""
    text = live.log.read_text(errors="replace")
    assert text, "the live log is empty"
    secrets = {**live.stack.secrets, "bootstrap": live.admin_key, "redis_url": live.settings.redis_url or ""}
    leaked = [name for name, value in secrets.items() if value and value in text]
    assert not leaked, f"the processes' log carries {leaked} (log: {live.log})"
