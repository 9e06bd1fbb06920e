"""Server-Sent Events without I/O: a line decoder, and the chat state that turns events into tokens.

The sync and the async client both feed these from their own connections, so resuming (``Last-Event-ID``
after a dropped connection) and redelivery (a ``status`` event with a new ``attempt``) behave the same in both.
"""

from __future__ import annotations

import json

from protostar.client.errors import JobFailed
from protostar.client.models import Event, Reset, Source


class Decoder:
    """Feed lines (without their line ending); complete events come out. A half-received event never does."""

    def __init__(self) -> None:
        self._fields: dict[str, str] = {}
        self._data: list[str] = []

    def feed(self, line: str) -> Event | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):  # a comment: the server's keep-alive
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name in ("id", "event"):
            self._fields[name] = value
        return None

    def _dispatch(self) -> Event | None:
        fields, data = self._fields, self._data
        self._fields, self._data = {}, []
        if not data or "id" not in fields:
            return None
        try:
            payload = json.loads("\n".join(data))
        except ValueError:
            payload = {"raw": "\n".join(data)}
        data_ = payload if isinstance(payload, dict) else {"value": payload}
        return Event(id=fields["id"], type=fields.get("event", "message"), data=data_)


class ChatState:
    """Turns a chat job's events into tokens, a :class:`Reset` when a new attempt starts, and the end.

    ``text`` is the answer of the current attempt so far, ``sources`` its numbered sources (from the ``sources``
    event, before the first token; empty from a server without it). After ``done``, ``finished`` is true and
    :meth:`check` raises :class:`JobFailed` unless the job succeeded.
    """

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.text = ""
        self.sources: list[Source] = []
        self.attempt: int | None = None
        self.status: str | None = None
        self.error: tuple[str | None, str | None] = (None, None)
        self.finished = False

    def feed(self, event: Event) -> str | Reset | None:
        data = event.data
        if event.type == "token":
            piece = str(data.get("text", ""))
            self.text += piece
            return piece
        if event.type == "sources":
            self.sources = [Source.of(s) for s in data.get("sources") or [] if isinstance(s, dict)]
        elif event.type == "status":
            self.status = str(data.get("status", self.status))
            attempt = data.get("attempt")
            if isinstance(attempt, int) and attempt != self.attempt:
                restarted = self.attempt is not None
                self.attempt = attempt
                if restarted:
                    self.text, self.sources = "", []
                    return Reset(attempt)
        elif event.type == "error":
            self.error = (data.get("code"), data.get("message"))
        elif event.type == "done":
            self.status = str(data.get("status", self.status))
            self.finished = True
        return None

    def check(self) -> None:
        if self.status != "succeeded":
            code, message = self.error
            raise JobFailed(self.job_id, self.status or "failed", code, message)
