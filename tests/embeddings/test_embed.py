"""Embedders: the bundled model on torch for real (ONNX Runtime: test_onnx.py), the OpenAI-compatible one
against a fake HTTP transport."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx2
import numpy as np
import pytest

from protostar.embeddings.embed import LocalEmbedder, OpenAIEmbedder, make_embedder
from protostar.errors import InputRejected, ServiceError, Transient
from protostar.settings import Settings


@pytest.fixture(scope="module")
def local() -> LocalEmbedder:
    return LocalEmbedder(batch_size=4, threads=1)


def test_local_vectors_are_float32_unit_rows(local: LocalEmbedder) -> None:
    vectors = local.embed(["a first sentence", "another one", ""])
    assert (local.model, local.dim) == ("all-MiniLM-L6-v2", 384)
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert local.embed([]).shape == (0, 384)


def test_local_similar_sentences_are_closer_than_unrelated_ones(local: LocalEmbedder) -> None:
    cat, kitten, revenue = local.embed(
        ["The cat sat on the mat.", "A kitten is lying on a rug.", "Quarterly revenue grew by twelve percent."]
    )
    assert cat @ kitten > cat @ revenue + 0.3
    assert cat @ kitten > kitten @ revenue + 0.3


def test_local_batches_give_the_same_vectors_as_one_by_one(local: LocalEmbedder) -> None:
    texts = [
        "short",
        "a somewhat longer sentence about the weather in spring",
        "word " * 300,  # longer than the model's window: truncated the same way in both cases
        "tabs\tand\nnewlines",
        "ünïcödé and emoji 🚀",
    ]
    together = local.embed(texts)
    one_by_one = np.concatenate([local.embed([t]) for t in texts])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_make_embedder_picks_the_provider() -> None:
    torch_path = make_embedder(Settings(embedding_provider="local", embedding_model="all-MiniLM-L6-v2"), threads=1)
    assert isinstance(torch_path, LocalEmbedder)
    remote = make_embedder(
        Settings(embedding_provider="openai", embedding_base_url="http://x/v1", embedding_model="m", embedding_dim=8)
    )
    assert isinstance(remote, OpenAIEmbedder)
    assert (remote.model, remote.dim) == ("m", 8)
    with pytest.raises(ServiceError):
        make_embedder(Settings(embedding_provider="local", embedding_dim=768))


# --- OpenAI-compatible endpoint, faked at the HTTP transport --------------------------------------------

Handler = Callable[[httpx2.Request], httpx2.Response]


def embeddings_response(inputs: list[str], dim: int) -> httpx2.Response:
    """Deterministic, non-normalised vectors, listed in reverse order (the index field says where each goes)."""
    data = [
        {"object": "embedding", "index": i, "embedding": [float(len(text) + 1)] + [float(i + 1)] * (dim - 1)}
        for i, text in enumerate(inputs)
    ]
    body = {"object": "list", "data": data[::-1], "model": "m", "usage": {"prompt_tokens": 1, "total_tokens": 1}}
    return httpx2.Response(200, json=body)


class Fake:
    """Answers each request with the next scripted status (then 200s), recording what it was sent."""

    def __init__(self, statuses: list[int] | None = None, dim: int = 4) -> None:
        self.statuses = list(statuses or [])
        self.dim = dim
        self.requests: list[dict[str, object]] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        assert request.url.path == "/v1/embeddings"
        assert request.headers["authorization"] == "Bearer secret"
        if self.statuses:
            status = self.statuses.pop(0)
            return httpx2.Response(status, json={"error": {"message": "scripted", "type": "x"}})
        return embeddings_response(body["input"], self.dim)


def remote(handler: Handler, *, dim: int = 4, batch_size: int = 3, sleeps: list[float] | None = None) -> OpenAIEmbedder:
    return OpenAIEmbedder(
        base_url="http://embeddings.test/v1",
        api_key="secret",
        model="m",
        dim=dim,
        batch_size=batch_size,
        timeout=5,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
        sleep=(sleeps if sleeps is not None else []).append,
    )


def test_openai_embedder_batches_orders_and_normalises() -> None:
    fake = Fake()
    texts = ["a", "bb", "ccc", "dddd", "eeeee", "f", "gg"]
    vectors = remote(fake).embed(texts)
    assert [r["input"] for r in fake.requests] == [["a", "bb", "ccc"], ["dddd", "eeeee", "f"], ["gg"]]
    assert all(r["model"] == "m" and r["encoding_format"] == "float" for r in fake.requests)
    assert vectors.shape == (7, 4)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    # Each row is the one of its own input, despite the reversed listing: first component ∝ len(text) + 1.
    ratios = vectors[:, 0] / vectors[:, 1]
    expected = [(len(t) + 1) / (i % 3 + 1) for i, t in enumerate(texts)]
    np.testing.assert_allclose(ratios, expected, rtol=1e-5)


def test_openai_embedder_retries_a_rate_limit_then_succeeds() -> None:
    fake, sleeps = Fake([429, 503]), list[float]()
    vectors = remote(fake, sleeps=sleeps).embed(["a", "b"])
    assert vectors.shape == (2, 4)
    assert len(fake.requests) == 3
    assert len(sleeps) == 2
    assert all(0 <= s <= 10 for s in sleeps)


def test_openai_embedder_gives_up_on_persistent_errors_as_transient() -> None:
    fake, sleeps = Fake([500] * 10), list[float]()
    with pytest.raises(Transient, match="4 times"):
        remote(fake, sleeps=sleeps).embed(["a"])
    assert len(fake.requests) == 4  # capped, and the client's own retries are off
    assert len(sleeps) == 3


def test_openai_embedder_retries_connection_errors() -> None:
    calls = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        calls.append(request)
        if len(calls) == 1:
            raise httpx2.ConnectTimeout("slow", request=request)
        return embeddings_response(json.loads(request.content)["input"], 4)

    assert remote(handler).embed(["a"]).shape == (1, 4)
    assert len(calls) == 2


def test_openai_embedder_refuses_a_wrong_dimension() -> None:
    with pytest.raises(ServiceError, match="dimension"):
        remote(Fake(dim=5), dim=4).embed(["a"])


def test_openai_embedder_does_not_retry_client_errors() -> None:
    fake = Fake([400])
    with pytest.raises(InputRejected):
        remote(fake).embed(["a"])
    fake = Fake([401])
    with pytest.raises(ServiceError, match="401"):
        remote(fake).embed(["a"])
    assert len(fake.requests) == 1
