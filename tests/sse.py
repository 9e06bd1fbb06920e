"""A small SSE reader over httpx, for tests and benchmarks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class SSE:
    id: str
    event: str
    data: dict[str, Any]


def read_events(
    client: httpx.Client,
    job_id: str,
    *,
    last_event_id: str | None = None,
    stop_after: int | None = None,
    timeout: float = 60,
) -> Iterator[SSE]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout) as response:
        response.raise_for_status()
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        count = 0
        for line in response.iter_lines():
            if line.startswith(":"):
                continue
            if line == "":
                if "id" in fields:  # a block without an id (the stream's opening ``retry:``) is no event
                    yield SSE(fields["id"], fields["event"], json.loads(fields["data"]))
                    count += 1
                    fields = {}
                    if stop_after is not None and count >= stop_after:
                        return
                fields = {}
                continue
            key, _, value = line.partition(": ")
            fields[key] = value
