"""Settings refuse unsafe combinations instead of failing later in production."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from protostar.settings import Settings


def test_defaults_are_valid_for_development() -> None:
    settings = Settings(_env_file=None)
    assert settings.visibility_timeout > settings.ingest_time_limit


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"chat_soft_time_limit": 400, "chat_time_limit": 300}, "soft time limit"),
        ({"visibility_timeout": 600}, "visibility_timeout must exceed"),
        ({"takeover_after": 400, "reap_after": 300}, "takeover_after"),
        ({"llm_total_timeout": 300}, "llm_total_timeout must be below chat_soft_time_limit"),
        (
            {
                "llm_total_timeout": 250,
                "chat_soft_time_limit": 400,
                "chat_time_limit": 430,
                "summary_soft_time_limit": 200,
            },
            "llm_total_timeout must be below summary_soft_time_limit",
        ),
        ({"summary_max_tokens": 600}, "three summaries"),
        ({"ocr_max_pages": 100, "ocr_page_seconds": 20}, "ocr_max_pages x ocr_page_seconds"),
        (
            {"environment": "production", "redis_url": None, "database_url": None, "s3_endpoint": None},
            "PROTOSTAR_REDIS_URL",
        ),
        (
            {
                "environment": "production",
                "redis_url": "redis://r",
                "database_url": "postgresql+psycopg://d",
                "s3_endpoint": "s3:9000",
                "flower_password": "x" * 20,
                "llm_base_url": "http://vllm:8000/v1",
                "bootstrap_api_key": "short",
            },
            "at least 32",
        ),
    ],
)
def test_unsafe_settings_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(_env_file=None, **overrides)  # type: ignore[arg-type]


def test_environment_variables_are_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROTOSTAR_API_PORT", "9123")
    monkeypatch.setenv("PROTOSTAR_API_URL", "https://api.example.test")
    settings = Settings(_env_file=None)
    assert settings.api_port == 9123
    assert settings.public_api_url == "https://api.example.test"
