"""How a sharded ingest cuts chunks into embed runs: ``ingest_part_chunks`` each, except the document's last
chunks, which are shared by every ingest child (no live stack)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from protostar.ingest import shard
from protostar.ingest.chunk import Chunk
from protostar.settings import Settings

SETTINGS = Settings(_env_file=None, ingest_part_chunks=192, ingest_concurrency=2)  # type: ignore[call-arg]
EMBEDDER: Any = SimpleNamespace(model="m")


def sizes(count: int, *, tail: bool) -> list[int]:
    chunks = [Chunk(i, f"chunk {i}", None, [], 3) for i in range(count)]
    runs = shard._runs(chunks, embedder=EMBEDDER, settings=SETTINGS, tail=tail)
    assert [t for run in runs for t in run["texts"]] == [c.text for c in chunks]  # in order, each once
    return [len(run["texts"]) for run in runs]


def test_runs_are_the_part_size_while_the_document_goes_on() -> None:
    assert sizes(169, tail=False) == [169]
    assert sizes(400, tail=False) == [192, 192, 16]


def test_the_last_chunks_are_split_between_the_children() -> None:
    assert sizes(169, tail=True) == [85, 84]  # not one run on one child while the other waits
    assert sizes(1, tail=True) == [1]
    assert sizes(1000, tail=True) == [192] * 5 + [40]  # enough for every child already
    assert sizes(0, tail=True) == []
