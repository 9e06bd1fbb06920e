"""The one LLM call chat answers and summaries make: take a turn under the shared limits (or raise ``LLMBusy``
after a short moment, so the job gives its worker thread back), stream the completion, close it at once when the
job is cancelled.

The caller passes its :class:`~protostar.llm.stream.Generation`, so whatever was generated before a failure or
a cancel stays readable (a chat answer keeps it as ``partial``).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from protostar.llm.limits import LLMLimiter
from protostar.llm.stream import ChatLLM, ChatMessage, Generation


class Cancellable(Protocol):
    """What a call needs of its job: a flag to wait on, and hooks run when it is set (a job context)."""

    cancelled: threading.Event

    def on_cancel(self, hook: Callable[[], None]) -> Callable[[], None]: ...


@dataclass(frozen=True)
class LLM:
    """The chat-completions client and the limits every call goes through; one per process."""

    client: ChatLLM
    limiter: LLMLimiter

    def check(self, tenant_id: uuid.UUID) -> None:
        """Raise ``LLMBusy`` when the tenant's call would find no turn now (nothing is taken)."""
        self.limiter.check(tenant_id)

    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        tenant_id: uuid.UUID,
        job: Cancellable,
        max_tokens: int,
        into: Generation,
        on_text: Callable[[str], object] = lambda _: None,
    ) -> float:
        """Stream a completion into ``into``; returns the seconds spent waiting for a turn."""
        forget = job.on_cancel(into.close)
        try:
            with self.limiter.turn(tenant_id, stop=job.cancelled) as waited:
                self.client.generate(messages, into, max_tokens=max_tokens, on_text=on_text)
            return waited
        finally:
            forget()
