"""Each process gets only the secrets it uses (``commands.environment``): what `protostar up` and the test stack
give the processes they start. The live stack's processes are checked in tests/runtime/test_live_secrets.py."""

from __future__ import annotations

from protostar.commands import SECRETS, WORKERS, environment

EVERYTHING = {
    "PATH": "/usr/bin",
    "PROTOSTAR_REDIS_URL": "redis://:pw@h:1/0",
    "PROTOSTAR_DATABASE_URL": "postgresql+psycopg://u:pw@h:2/p",
    "PROTOSTAR_S3_ENDPOINT": "h:3",
    "PROTOSTAR_S3_ACCESS_KEY": "root-access",
    "PROTOSTAR_S3_SECRET_KEY": "root-secret",
    "PROTOSTAR_BOOTSTRAP_API_KEY": "ps_admin",
    "PROTOSTAR_FLOWER_PASSWORD": "flower-pw",
    "FLOWER_BASIC_AUTH": "admin:flower-pw",
    "PROTOSTAR_LLM_API_KEY": "llm-key",
    "PROTOSTAR_EMBEDDING_API_KEY": "embedding-key",
}
SCOPED = {
    "write": {"PROTOSTAR_S3_ACCESS_KEY": "w-access", "PROTOSTAR_S3_SECRET_KEY": "w-secret"},
    "read": {"PROTOSTAR_S3_ACCESS_KEY": "r-access", "PROTOSTAR_S3_SECRET_KEY": "r-secret"},
}
SECRET_VARS = set(EVERYTHING) - {"PATH", "PROTOSTAR_REDIS_URL", "PROTOSTAR_DATABASE_URL", "PROTOSTAR_S3_ENDPOINT"}


def secrets_of(name: str, scoped: bool = True) -> dict[str, str]:
    env = environment(name, EVERYTHING, SCOPED if scoped else None)
    assert env["PROTOSTAR_REDIS_URL"] == EVERYTHING["PROTOSTAR_REDIS_URL"]  # every process needs both
    assert env["PROTOSTAR_DATABASE_URL"] == EVERYTHING["PROTOSTAR_DATABASE_URL"]
    return {k: v for k, v in env.items() if k in SECRET_VARS}


def test_every_process_up_starts_has_an_entry() -> None:
    assert {f"worker-{name}" for name in WORKERS} | {"api", "beat", "flower"} == set(SECRETS)


def test_each_process_gets_only_its_secrets() -> None:
    assert secrets_of("api") == {
        "PROTOSTAR_BOOTSTRAP_API_KEY": "ps_admin",
        "PROTOSTAR_S3_ACCESS_KEY": "w-access",
        "PROTOSTAR_S3_SECRET_KEY": "w-secret",
        "PROTOSTAR_EMBEDDING_API_KEY": "embedding-key",
    }
    assert secrets_of("worker-ingest") == {  # parses untrusted files: no admin key, no Flower, a read-only key
        "PROTOSTAR_S3_ACCESS_KEY": "r-access",
        "PROTOSTAR_S3_SECRET_KEY": "r-secret",
        "PROTOSTAR_EMBEDDING_API_KEY": "embedding-key",
    }
    assert secrets_of("worker-chat") == {
        "PROTOSTAR_LLM_API_KEY": "llm-key",
        "PROTOSTAR_EMBEDDING_API_KEY": "embedding-key",
    }
    assert secrets_of("worker-summary") == {"PROTOSTAR_LLM_API_KEY": "llm-key"}
    assert secrets_of("worker-maintenance") == {}
    assert secrets_of("beat") == {}
    assert secrets_of("flower") == {"PROTOSTAR_FLOWER_PASSWORD": "flower-pw", "FLOWER_BASIC_AUTH": "admin:flower-pw"}
    assert secrets_of("anything-else") == {}


def test_an_external_store_keeps_its_configured_keys_for_those_that_use_it() -> None:
    assert secrets_of("worker-ingest", scoped=False)["PROTOSTAR_S3_ACCESS_KEY"] == "root-access"
    assert "PROTOSTAR_S3_ACCESS_KEY" not in secrets_of("worker-chat", scoped=False)


def test_another_instance_of_a_process_gets_its_secrets() -> None:
    """A second API (``api-2``, the stream-cap test's ``api-streams``) is an API: without the object store's
    keys it could not start, and its crash loop made the supervisor stop the whole test stack."""
    assert secrets_of("api-streams") == secrets_of("api")
    assert secrets_of("worker-ingest-2") == secrets_of("worker-ingest")
    assert secrets_of("apis") == {}
