"""What the two ``openai`` clients (chat completions, embeddings) share: one client per instance, built on first
use (so a prefork child builds its own after fork) with the library's retries off, because ours are jittered,
capped and classified; and which HTTP statuses are worth another try. Backoff between tries is
:func:`protostar.backoff.delay`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import openai


def retryable_status(status: int) -> bool:
    """Timeouts, conflicts, rate limits and server errors pass; the rest would fail the same way again."""
    return status in (408, 409, 429) or status >= 500


class LazyClient:
    """An ``openai.OpenAI`` made on first use and then shared by the instance's threads."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        timeout: float,
        connect_timeout: float | None = None,
        http_client: Any = None,
        make_http_client: Callable[[], Any] | None = None,
    ) -> None:
        """``timeout``: the longest wait for any read (a chat stream's first token, and each chunk after it);
        ``connect_timeout``: for connecting, when it should differ (else ``timeout``); ``make_http_client``:
        builds the HTTP client on first use when no ``http_client`` is given (else the library's default)."""
        self.base_url = base_url
        self._api_key, self._http_client, self._make_http_client = api_key, http_client, make_http_client
        self._timeout, self._connect_timeout = timeout, connect_timeout
        self._client: openai.OpenAI | None = None
        self._lock = threading.Lock()

    def get(self) -> openai.OpenAI:
        with self._lock:
            if self._client is None:
                import openai

                http_client = self._http_client
                if http_client is None and self._make_http_client is not None:
                    http_client = self._make_http_client()
                self._client = openai.OpenAI(
                    base_url=self.base_url,
                    api_key=self._api_key or "unused",  # local servers often need none; the client insists
                    timeout=openai.Timeout(self._timeout, connect=self._connect_timeout or self._timeout),
                    max_retries=0,
                    http_client=http_client,
                )
            return self._client
