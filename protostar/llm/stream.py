"""Streaming chat completions from any OpenAI-compatible server, with deadlines, capped retries and cancel.

Deadlines: a connect timeout, a first-token deadline (also the longest silence between two chunks: it is the
HTTP read timeout) and a total deadline, enforced by a timer that closes the stream even while a read blocks.
Retries: 429, 5xx, timeouts and connection errors are retried with full-jitter backoff, capped in number and
never past the total deadline, and only before the first token: once text reached the caller, a retry would
repeat it. Cancel: the caller registers :meth:`Generation.close` with its job's cancel hooks, which closes the
upstream stream and shuts its socket down: closing alone does not wake a read blocked in another thread, and
before the first token the thread waits on that read for as long as llama-server queues the request and reads
the prompt (seconds under load). The read then ends at once, and llama-server, its client gone, drops the
request. Every failure ends as :class:`~protostar.errors.LLMFailed` with a reason, or
:class:`~protostar.errors.Cancelled`; what was generated so far stays in :attr:`Generation.text`.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from protostar import backoff
from protostar.errors import Cancelled, LLMFailed, LLMUnavailable
from protostar.llm.http import LazyClient, retryable_status
from protostar.settings import Settings

if TYPE_CHECKING:
    import httpx2
    import openai

logger = logging.getLogger(__name__)

ChatMessage = dict[str, str]


@dataclass
class Generation:
    """One answer being generated: its text so far, token usage, and a way to stop it from another thread."""

    text: str = ""
    chunks: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    first_token_at: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _stream: Any = None
    _socket: socket.socket | None = None  # the request's connection, while the request and its stream last
    _why: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self, why: str = "cancelled") -> None:
        """Stop the generation: closes the upstream stream (safe from any thread, idempotent)."""
        with self._lock:
            if self._stop.is_set():
                return
            self._why = why
            self._stop.set()
            stream = self._stream
            if self._socket is not None:  # end a read blocked on it now
                _shutdown(self._socket)
        if stream is not None:
            try:
                stream.close()
            except Exception:  # boundary: the stream may be half-closed already
                logger.debug("closing the LLM stream failed", exc_info=True)

    def _attach(self, sock: socket.socket | None) -> None:
        """The socket the request is sent on (``None``: the request and its stream are over: never shut a
        connection down once it may be back in the pool)."""
        with self._lock:
            self._socket = sock
            if sock is not None and self._stop.is_set():
                _shutdown(sock)

    @property
    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens or 0, "completion_tokens": self.completion_tokens or self.chunks}


class ChatLLM:
    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        model: str,
        connect_timeout: float = 5.0,
        first_token_timeout: float = 60.0,
        total_timeout: float = 240.0,
        max_retries: int = 3,
        max_backoff: float = 8.0,
        temperature: float | None = None,  # None: the server's default
        http_client: httpx2.Client | None = None,
    ) -> None:
        self.base_url = base_url
        self.model = model
        self.temperature = temperature
        self.connect_timeout = connect_timeout
        self.first_token_timeout = first_token_timeout
        self.total_timeout = total_timeout
        self.max_retries = max_retries
        self.max_backoff = max_backoff
        self._client = LazyClient(
            base_url=base_url,
            api_key=api_key,
            timeout=first_token_timeout,
            connect_timeout=connect_timeout,
            http_client=http_client,
            make_http_client=_tracked_client,
        )

    @classmethod
    def from_settings(cls, settings: Settings, *, base_url: str | None = None) -> ChatLLM:
        url = base_url or settings.llm_base_url
        if not url:
            raise LLMFailed("no LLM is configured (PROTOSTAR_LLM_BASE_URL is empty and no embedded server runs)")
        key = settings.llm_api_key
        return cls(
            base_url=url,
            api_key=key.get_secret_value() if key else None,
            model=settings.llm_model,
            connect_timeout=settings.llm_connect_timeout,
            first_token_timeout=settings.llm_first_token_timeout,
            total_timeout=settings.llm_total_timeout,
            max_retries=settings.llm_max_retries,
            temperature=settings.llm_temperature,
        )

    def generate(
        self,
        messages: Sequence[ChatMessage],
        generation: Generation,
        *,
        max_tokens: int,
        on_text: Callable[[str], object],
    ) -> Generation:
        """Stream an answer into ``generation``, calling ``on_text`` with each piece as it arrives."""
        deadline = time.monotonic() + self.total_timeout
        timer = threading.Timer(self.total_timeout, generation.close, kwargs={"why": "deadline"})
        timer.daemon = True
        timer.start()
        try:
            for attempt in range(self.max_retries + 1):
                try:
                    self._stream_once(messages, generation, max_tokens=max_tokens, on_text=on_text)
                    return generation
                except _Retryable as exc:
                    # Past the first token a retry here would repeat the text already sent: the job is retried
                    # as a whole instead (LLMUnavailable is transient), its followers told to start over.
                    error = LLMUnavailable if exc.away else LLMFailed
                    if generation.chunks or attempt == self.max_retries:
                        raise error(self._gave_up(exc.reason, attempt, generation)) from exc.__cause__
                    delay = backoff.delay(attempt + 1, base=0.5, cap=self.max_backoff)
                    if time.monotonic() + delay >= deadline:
                        raise error(self._gave_up(exc.reason, attempt, generation)) from exc.__cause__
                    logger.warning("LLM call failed (%s); retry %d in %.2f s", exc.reason, attempt + 1, delay)
                    if generation._stop.wait(delay):
                        self._raise_stopped(generation)
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            timer.cancel()

    def _stream_once(
        self,
        messages: Sequence[ChatMessage],
        generation: Generation,
        *,
        max_tokens: int,
        on_text: Callable[[str], object],
    ) -> None:

        stream = self._open(messages, generation, max_tokens=max_tokens)
        with generation._lock:
            generation._stream = stream
        if generation._stop.is_set():  # closed between the request and now
            stream.close()
            self._raise_stopped(generation)
        with stream:
            try:
                self._read(stream, generation, on_text)
            finally:
                generation._attach(None)  # before the stream's end gives its connection back to the pool
        if generation._stop.is_set():
            self._raise_stopped(generation)

    def _read(self, stream: Any, generation: Generation, on_text: Callable[[str], object]) -> None:
        import openai

        chunks = iter(stream)
        while True:
            try:
                chunk = next(chunks)
            except StopIteration:
                return
            except Exception as exc:  # boundary with the provider's stream: broken, malformed, or closed
                if generation._stop.is_set():
                    self._raise_stopped(generation)
                if isinstance(exc, openai.APIConnectionError) or _is_transport_error(exc):
                    raise _Retryable(_connection_reason(exc)) from exc
                logger.warning("the LLM's stream was malformed: %r", exc)
                raise LLMFailed(f"the LLM's stream was malformed ({type(exc).__name__})") from exc
            self._take(chunk, generation, on_text)

    def _open(self, messages: Sequence[ChatMessage], generation: Generation, *, max_tokens: int) -> Any:
        """Send the request; the answer's stream once its headers came (its socket still attached to
        ``generation``)."""
        import openai

        if generation._stop.is_set():
            self._raise_stopped(generation)
        try:
            return self._send(messages, generation, max_tokens=max_tokens)
        except openai.APIStatusError as exc:
            status = exc.status_code
            if retryable_status(status):
                # A 500 is the server's own error on this request (llama-server: a failed decode): retried here,
                # then the job fails. Rate limits and 502-504 (a proxy or a server starting) are the LLM being away.
                raise _Retryable(f"HTTP {status}", away=status != 500) from exc
            raise LLMFailed(f"the LLM refused the request: HTTP {status}: {_detail(exc)}") from exc
        except openai.APIConnectionError as exc:  # includes timeouts, and a socket shut down by close()
            if generation._stop.is_set():
                self._raise_stopped(generation)
            raise _Retryable(_connection_reason(exc)) from exc

    def _send(self, messages: Sequence[ChatMessage], generation: Generation, *, max_tokens: int) -> Any:
        _sending.generation = generation  # the request's socket is attached to it as it is written
        try:
            return self._client.get().chat.completions.create(  # type: ignore[call-overload]
                model=self.model,
                messages=list(messages),
                max_tokens=max_tokens,
                stream=True,
                stream_options={"include_usage": True},
                **({} if self.temperature is None else {"temperature": self.temperature}),
            )
        except BaseException:
            generation._attach(None)  # no stream: the response is closed, its connection maybe pooled again
            raise
        finally:
            _sending.generation = None

    @staticmethod
    def _take(chunk: Any, generation: Generation, on_text: Callable[[str], object]) -> None:
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            generation.prompt_tokens = usage.prompt_tokens
            generation.completion_tokens = usage.completion_tokens
        for choice in getattr(chunk, "choices", None) or []:
            if choice.finish_reason:
                generation.finish_reason = choice.finish_reason
            piece = choice.delta.content if choice.delta is not None else None
            if piece:
                if generation.first_token_at is None:
                    generation.first_token_at = time.monotonic()
                generation.text += piece
                generation.chunks += 1
                on_text(piece)

    def _raise_stopped(self, generation: Generation) -> None:
        if generation._why == "deadline":
            raise LLMFailed(f"the LLM did not finish within {self.total_timeout:g} s")
        raise Cancelled("cancelled by request")

    def _gave_up(self, reason: str, attempt: int, generation: Generation) -> str:
        if generation.chunks:
            return f"the LLM's stream broke after {generation.chunks} tokens: {reason}"
        tries = f" after {attempt} retries" if attempt else ""
        logger.warning("the LLM at %s did not answer%s: %s", self.base_url, tries, reason)
        return f"the LLM did not answer{tries}: {reason}"  # no URL: the message reaches the caller


class _Sending(threading.local):
    generation: Generation | None = None


_sending = _Sending()  # per thread: the generation whose request this thread is sending (the sync client's)


def _shutdown(sock: socket.socket) -> None:
    """Wake a read blocked on ``sock`` in another thread (``close`` alone would not) and tell the peer."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed or never connected
        logger.debug("shutting the LLM socket down failed", exc_info=True)


def _tracked_client() -> httpx2.Client:
    """The ``openai`` client's default HTTP client, but every connection it writes a request on is attached
    to the generation the writing thread is sending (:data:`_sending`), so :meth:`Generation.close` can end a
    request still waiting for its first byte."""
    import httpcore2
    import httpx2
    import openai

    class Tracked(httpcore2.NetworkStream):
        def __init__(self, inner: httpcore2.NetworkStream) -> None:
            self.inner = inner

        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            return self.inner.read(max_bytes, timeout)

        def write(self, buffer: bytes, timeout: float | None = None) -> None:
            generation = _sending.generation
            if generation is not None:
                generation._attach(self.inner.get_extra_info("socket"))
            self.inner.write(buffer, timeout)

        def close(self) -> None:
            self.inner.close()

        def start_tls(self, *args: Any, **kwargs: Any) -> httpcore2.NetworkStream:
            return Tracked(self.inner.start_tls(*args, **kwargs))

        def get_extra_info(self, info: str) -> Any:
            return self.inner.get_extra_info(info)

    class Backend(httpcore2.SyncBackend):
        def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore2.NetworkStream:
            return Tracked(super().connect_tcp(*args, **kwargs))

    limits = openai.DEFAULT_CONNECTION_LIMITS
    transport = httpx2.HTTPTransport(limits=limits)
    # The transport's own pool, but on the tracking backend (httpx2 takes no backend of its own).
    transport._pool = httpcore2.ConnectionPool(
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=Backend(),
    )
    return openai.DefaultHttpxClient(transport=transport)


class _Retryable(Exception):
    def __init__(self, reason: str, *, away: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.away = away  # the LLM could not be reached (transient for the job), not an error it answered with


def _detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:300]
    return str(exc.message)[:300]


def _connection_reason(exc: BaseException) -> str:
    name = type(exc).__name__
    if "Timeout" in name or "timed out" in str(exc).lower():
        return "timed out waiting for the LLM"
    return f"connection to the LLM failed ({name})"


def _is_transport_error(exc: BaseException) -> bool:
    import httpx2

    return isinstance(exc, (httpx2.TransportError, httpx2.StreamError))
