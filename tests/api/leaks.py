"""What an error body must never carry: the addresses and secrets of the system's own parts."""

from __future__ import annotations

import json

from protostar.settings import Settings


def stored_secrets(settings: Settings) -> list[str]:
    """The embedded stack's generated secrets (passwords, every object-store key pair, the LLM's key)."""
    try:
        return list(json.loads((settings.data_dir / "secrets.json").read_text()).values())
    except FileNotFoundError:
        return []


def internal_strings(settings: Settings) -> list[str]:
    """Every internal address and secret a careless message could echo."""
    found = [
        *stored_secrets(settings),
        settings.database_url,
        settings.redis_url,
        settings.s3_endpoint,
        settings.llm_base_url,
        settings.embedding_base_url,
        *(s.get_secret_value() for s in (settings.s3_access_key, settings.s3_secret_key, settings.llm_api_key) if s),
        *(s.get_secret_value() for s in (settings.flower_password, settings.bootstrap_api_key) if s),
        f":{settings.postgres_port}",
        f":{settings.redis_port}",
        f":{settings.s3_port}",
        f":{settings.llm_port}",
        "Traceback",
        "sqlalchemy",
        "psycopg",
        "SELECT ",
        "tenants/",  # object keys
    ]
    return [s for s in found if s]


def assert_no_internals(text: str, settings: Settings) -> None:
    leaked = [s for s in internal_strings(settings) if s in text]
    assert not leaked, f"an error body carries internal text {leaked}: {text[:500]}"
