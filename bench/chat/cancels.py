"""Cancel latency by stage: a path stream is cancelled (``POST /v1/jobs/{id}/cancel``) at a chosen moment, and
the time from that request to the job's ``cancelled`` status event at the client is noted.

Stages (the event the client has just read when it sends the cancel):

* ``queued``: the message was accepted (the POST answered), no event read yet;
* ``retrieval``: the ``progress`` event of ``retrieve`` 0 (the worker has started retrieving);
* ``prompt``: the ``progress`` event of ``generate`` 0 (the request goes to the LLM next: it queues there and
  reads the prompt until the first token);
* ``generation``: the first ``token`` event.

The question is long (:data:`FILLER_WORDS` random words after the ticket number, so no slot has any of it
cached): llama-server reads it for a noticeable time, as it would a prompt with sources. A stream whose job
ended before the cancel took effect (``succeeded``) is counted apart: its latency says nothing.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass

import httpx

from bench.chat import streams
from bench.chat.streams import Target

STAGES = ("queued", "retrieval", "prompt", "generation")
FILLER_WORDS = 300
_WORDS = [
    "river",
    "mountain",
    "copper",
    "lantern",
    "orchard",
    "violet",
    "harbor",
    "thunder",
    "meadow",
    "pepper",
    "silver",
    "canyon",
    "falcon",
    "marble",
    "ember",
    "willow",
    "basket",
    "saddle",
    "compass",
    "garden",
    "tunnel",
    "candle",
    "ribbon",
    "glacier",
    "pebble",
    "timber",
    "walnut",
    "cactus",
]


def long_question() -> str:
    filler = " ".join(random.choice(_WORDS) for _ in range(FILLER_WORDS))
    return f"Ticket {random.randint(100_000, 999_999)}. Summarize these words: {filler}"


@dataclass
class CancelRun:
    stage: str
    sent: float | None = None  # time.time() the cancel request was sent
    ended: float | None = None  # the terminal status event arrived
    status: str | None = None
    tokens_after: int = 0  # token events read after the cancel was sent
    error: str | None = None

    @property
    def latency(self) -> float | None:
        if self.sent is None or self.ended is None or self.status != "cancelled":
            return None
        return self.ended - self.sent


def _trigger(stage: str, kind: str, data: dict[str, object]) -> bool:
    if stage == "retrieval":
        return kind == "progress" and data.get("stage") == "retrieve" and data.get("done") == 0
    if stage == "prompt":
        return kind == "progress" and data.get("stage") == "generate" and data.get("done") == 0
    return stage == "generation" and kind == "token" and bool(data.get("text"))


async def one(client: httpx.AsyncClient, target: Target, session_id: str, stage: str) -> CancelRun:
    headers = {"Authorization": f"Bearer {target.api_key}"}
    run = CancelRun(stage)
    pending: list[asyncio.Task[httpx.Response]] = []

    def cancel(job_id: str) -> None:
        run.sent = time.time()
        pending.append(asyncio.create_task(client.post(f"{target.api_url}/v1/jobs/{job_id}/cancel", headers=headers)))

    try:
        answer = await client.post(
            f"{target.api_url}/v1/sessions/{session_id}/messages", json={"content": long_question()}, headers=headers
        )
        answer.raise_for_status()
        body = answer.json()
        job_id = str(body["job_id"])
        if stage == "queued":
            cancel(job_id)
        async with client.stream("GET", body["events_url"], headers=headers) as response:
            response.raise_for_status()
            async for event in streams._events(response):
                data = json.loads(event.data)
                if run.sent is None and _trigger(stage, event.type, data):
                    cancel(job_id)
                elif run.sent is not None and event.type == "token":
                    run.tokens_after += 1
                if event.type == "status" and data.get("status") in ("cancelled", "succeeded", "failed"):
                    run.ended, run.status = event.at, str(data["status"])
                if event.type == "done":
                    break
        for task in pending:
            (await task).raise_for_status()
    except httpx.HTTPError as exc:
        run.error = f"{type(exc).__name__}: {exc}"
    return run


def measure(target: Target, samples: int) -> list[CancelRun]:
    """``samples`` cancels at each stage, one stream at a time, stages interleaved."""

    async def run() -> list[CancelRun]:
        out: list[CancelRun] = []
        async with streams.client() as http:
            for _ in range(samples):
                for stage in STAGES:
                    session = (await streams.sessions(http, target, 1))[0]
                    out.append(await one(http, target, session, stage))
                    await asyncio.sleep(0.3)  # the cancelled job's end settles (row, ack) before the next
        return out

    return asyncio.run(run())
