"""Protostar's chat worker, unchanged, with a timestamp at each hop of a chat job.

    celery -A bench.chat.trace_worker worker ...     # the argv of ``commands.worker(settings, "chat")``

The Celery app is ``protostar.worker.app``'s own; this module only wraps, at import, the functions a chat
job passes through, noting ``time.time()`` (one clock for every process of the run) and the task thread's
CPU time (``time.thread_time()``). The trace lives in the task thread's memory and is written to Redis
(``bench:chat:trace:<job_id>``, one SET) after the task has returned. Cost: a few microseconds per hop and
about one per token, next to the millisecond hops measured.

Stamps (first occurrence each): ``received`` (the consumer got the message), ``prerun`` (a pool thread
starts the task), ``claim_start``/``claim_end``, ``retrieve_start``/``embed_start``/``embed_end``/
``retrieve_end``, ``acquire_start``/``acquire_end`` (the LLM limiter), ``generate_start``, ``llm_request``
(``_stream_once`` begins: the OpenAI client builds and sends the request), ``first_chunk`` (the first chunk
of the LLM's stream, text or not), ``generate_end``, ``postrun``; lists ``events`` (type, stage, XADD start,
XADD end), ``tokens`` (XADD start, XADD end: the start is when the chunk came off the LLM's stream) and
``spans`` (what, start, end: every row UPDATE, SELECT, event XADD, embedding, search and limiter call).
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from celery.signals import task_postrun, task_prerun, task_received

from bench.chat import TRACE_PREFIX
from protostar.chat import pipeline
from protostar.chat import repo as chat_repo
from protostar.constants import EventType
from protostar.jobs import repo
from protostar.jobs.events import EventLog
from protostar.llm.limits import LLMLimiter
from protostar.llm.stream import ChatLLM
from protostar.worker import resources
from protostar.worker.app import app

TRACE_TTL = 3600

_local = threading.local()
_received: dict[str, float] = {}

__all__ = ["TRACE_PREFIX", "app"]


def _trace() -> dict[str, Any] | None:
    trace: dict[str, Any] | None = getattr(_local, "trace", None)
    return trace


_WITH_CPU = {"llm_request"}  # also note the task thread's CPU time here


def _stamp(name: str) -> None:
    trace = _trace()
    if trace is not None and name not in trace:
        trace[name] = time.time()
        if name in _WITH_CPU:
            trace[f"cpu_{name}"] = time.thread_time()


def _span(kind: str, started: float) -> None:
    trace = _trace()
    if trace is not None:
        trace["spans"].append((kind, started, time.time()))


def _wrap(owner: Any, name: str, before: str, after: str, *, span: str | None = None) -> None:
    """Stamp ``before``/``after`` around ``owner.name`` (first call), and note every call as a ``span``.
    A name the product no longer has is skipped (its time then shows as the table's "rest")."""
    original: Callable[..., Any] | None = getattr(owner, name, None)
    if original is None:
        return

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _stamp(before)
        started = time.time()
        try:
            return original(*args, **kwargs)
        finally:
            _stamp(after)
            if span is not None:
                _span(span, started)

    setattr(owner, name, wrapper)


class _TimedEmbedder:
    """The worker's embedder, with the query embedding timed (``retrieve`` calls ``embed`` once)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def embed(self, texts: Sequence[str]) -> Any:
        _stamp("embed_start")
        started = time.time()
        try:
            return self._inner.embed(texts)
        finally:
            _stamp("embed_end")
            _span("query embedding", started)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _install() -> None:
    _wrap(repo, "claim", "claim_start", "claim_end", span="claim (row UPDATE)")
    _wrap(repo, "progress", "progress_start", "progress_end", span="progress (row UPDATE)")
    context = "question, summary, history, has chunks (one SELECT)"
    _wrap(pipeline, "load_context", "question_start", "question_end", span=context)
    _wrap(chat_repo, "has_chunks", "chunks_start", "chunks_end", span="has the tenant chunks (SELECT EXISTS)")
    _wrap(LLMLimiter, "_acquire", "acquire_start", "acquire_end", span="LLM limiter (Redis script)")
    _wrap(ChatLLM, "_stream_once", "llm_request", "llm_stream_end")

    retrieve: Callable[..., Any] = pipeline.retrieve

    @functools.wraps(retrieve)
    def timed_retrieve(ctx: Any, engine: Any, embedder: Any, **kwargs: Any) -> Any:
        _stamp("retrieve_start")
        started = time.time()
        try:
            return retrieve(ctx, engine, _TimedEmbedder(embedder), **kwargs)
        finally:
            _stamp("retrieve_end")
            _span("retrieve (embedding + search)", started)

    setattr(pipeline, "retrieve", timed_retrieve)  # noqa: B010

    generate = ChatLLM.generate

    @functools.wraps(generate)
    def timed_generate(self: ChatLLM, *args: Any, **kwargs: Any) -> Any:
        _stamp("generate_start")
        try:
            return generate(self, *args, **kwargs)
        finally:
            _stamp("generate_end")
            trace = _trace()
            if trace is not None:
                trace["cpu_generate_end"] = time.thread_time()

    ChatLLM.generate = timed_generate  # type: ignore[method-assign]

    take = ChatLLM._take

    @functools.wraps(take)
    def timed_take(chunk: Any, generation: Any, on_text: Callable[[str], object]) -> None:
        _stamp("first_chunk")
        take(chunk, generation, on_text)

    ChatLLM._take = staticmethod(timed_take)  # type: ignore[method-assign]

    publish_many = EventLog.publish_many

    @functools.wraps(publish_many)
    def timed_publish(self: EventLog, job_id: Any, events: list[tuple[EventType, dict[str, Any]]]) -> list[str]:
        trace = _trace()
        started, cpu = time.time(), time.thread_time()
        ids = publish_many(self, job_id, events)
        if trace is not None:
            ended = time.time()
            kind, data = events[0]
            if kind == EventType.TOKEN:
                trace["tokens"].append((started, ended))
                trace["cpu_token_xadd"] = trace.get("cpu_token_xadd", 0.0) + time.thread_time() - cpu
                trace.setdefault("cpu_first_token", time.thread_time())
            else:
                trace["events"].append((kind.value, data.get("stage") or data.get("status"), started, ended))
                trace["spans"].append(("event XADD (status, progress)", started, ended))
        return ids

    EventLog.publish_many = timed_publish  # type: ignore[method-assign]


def _on_received(request: Any = None, **_: Any) -> None:
    if request is not None:
        _received[str(request.id)] = time.time()


def _on_prerun(task_id: str = "", **_: Any) -> None:
    _local.trace = {
        "job_id": task_id,
        "received": _received.pop(task_id, None),
        "prerun": time.time(),
        "cpu_prerun": time.thread_time(),
        "events": [],
        "tokens": [],
        "spans": [],
    }


def _on_postrun(task_id: str = "", **_: Any) -> None:
    trace = _trace()
    _local.trace = None
    if trace is None:
        return
    trace["postrun"] = time.time()
    trace["cpu_postrun"] = time.thread_time()
    resources.current().redis.set(TRACE_PREFIX + task_id, json.dumps(trace), ex=TRACE_TTL)


_install()
task_received.connect(_on_received, weak=False)
task_prerun.connect(_on_prerun, weak=False)
task_postrun.connect(_on_postrun, weak=False)
