"""One large PDF on every ingest child: parse page ranges and embed runs of chunks in parallel.

The job's own delivery (the *coordinator*, :func:`run`) plans the parts of a phase as rows in PostgreSQL
(:mod:`protostar.ingest.parts`), asks the task layer to send helper tasks (``fan_out``, a port: no Celery here),
and then works through the parts itself like any helper does (:func:`help_job`): claim a free part with a lease,
do it, write its result. It never waits on a part that only a busy child could do, so two children never
deadlock; when no helper runs at all, the coordinator does every part. Two phases, which overlap:

1. ``parse``: page ranges of ``ingest_part_pages`` pages, each copied to a PDF of its own with PDFium and parsed
   as a whole file is; the elements get their pages in the whole document back.
2. ``embed``: the chunks, cut from the elements by one chunker fed the parsed page ranges in order (so their
   texts, order and pages are exactly a single pass's), in runs of ``ingest_part_chunks``, embedded and written
   as float32 vectors. A chunk once closed never changes, so the coordinator plans each run as soon as its
   chunks are closed, between its own parts: children embed the first pages while others parse the last ones
   (parse parts are claimed first, so that the phase that feeds the other ends early). A document of another
   format with over ``ingest_shard_chunks`` chunks is parsed and chunked in one piece, and has only this phase
   (:func:`embed`).

A part's result survives its child: a child killed mid-part leaves the lease to run out (``ingest_part_lease``)
and the part is claimed again. Results are keyed by job, not attempt, so a redelivered job keeps the done parts.
The coordinator stores the chunks in one transaction as the single-task path does, and deletes the parts in it.
A cancel stops every part: claims and lease renewals require the job ``running`` with no cancel requested, and
the coordinator's own checks raise as usual. A part that cannot be parsed fails the job with its reason.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pypdfium2 as pdfium  # type: ignore[import-untyped]
from sqlalchemy import Engine

from protostar.embeddings.embed import Embedder
from protostar.errors import InputRejected, OutOfMemory
from protostar.ingest import parts
from protostar.ingest.chunk import Chunk, Chunker
from protostar.ingest.parse import Element, parse
from protostar.jobs.context import JobContext
from protostar.settings import Settings
from protostar.storage import Bucket

logger = logging.getLogger(__name__)

PARSE, EMBED = "parse", "embed"
NO_TEXT = "no text could be extracted"  # parse()'s reason for a PDF with no text layer
POLL = 0.25  # seconds between looks at the parts while other children finish theirs

FanOut = Callable[[int], None]  # send this many helper tasks for the job (the task layer's port)


def pages_to_shard(path: Path, kind: str, settings: Settings) -> int | None:
    """The page count of a PDF large enough to shard; None for anything else (other formats, small or
    unreadable PDFs: the single-task path handles and refuses them with its own reasons)."""
    if kind != "pdf":
        return None
    try:
        document = pdfium.PdfDocument(str(path))
    except Exception:  # noqa: BLE001 (encrypted, broken: parse() says why)
        return None
    try:
        count = len(document)
    finally:
        document.close()
    if count <= settings.ingest_shard_pages or count > settings.max_pages:
        return None
    return count


def run(
    ctx: JobContext,
    *,
    path: Path,
    page_count: int,
    fan_out: FanOut,
    engine: Engine,
    embedder: Embedder,
    settings: Settings,
) -> tuple[list[Chunk], np.ndarray]:
    """The coordinator: the document's chunks and their vectors, made by all ingest children. The phases
    overlap: between parts, the coordinator feeds the page ranges parsed so far (in order) to one chunker and
    plans an embed run for every ``ingest_part_chunks`` chunks closed, so children embed while others parse."""
    step = settings.ingest_part_pages
    ranges = [{"first": first, "last": min(first + step - 1, page_count)} for first in range(1, page_count + 1, step)]
    parts.plan(engine, job_id=ctx.job_id, phase=PARSE, specs=ranges)
    fan_out(min(len(ranges) - 1, settings.ingest_concurrency - 1))

    chunker = Chunker(max_tokens=settings.chunk_tokens, overlap=settings.chunk_overlap)
    fed, planned = 0, 0  # parse parts fed to the chunker; embed runs planned

    def feed() -> None:
        nonlocal fed, planned
        for blob in parts.results(engine, job_id=ctx.job_id, phase=PARSE, first=fed):
            chunker.feed([Element(text=t, type=k, page=p) for t, k, p in json.loads(blob)])
            fed += 1
        runs = _runs(chunker.closed[planned * settings.ingest_part_chunks :], embedder=embedder, settings=settings)
        full = [r for r in runs if len(r["texts"]) == settings.ingest_part_chunks]
        parts.plan(engine, job_id=ctx.job_id, phase=EMBED, specs=full, start=planned, final=False)
        planned += len(full)

    _drive(
        ctx, PARSE, page_count, engine=engine, embedder=embedder, settings=settings, source=lambda: path, between=feed
    )
    feed()
    chunks = chunker.finish()
    if not chunks:
        raise InputRejected("the document has no text to index")
    ctx.progress("chunk", len(chunks), len(chunks))
    vectors = embed(ctx, chunks, fan_out=fan_out, engine=engine, embedder=embedder, settings=settings, planned=planned)
    return chunks, vectors


def embed(
    ctx: JobContext,
    chunks: list[Chunk],
    *,
    fan_out: FanOut,
    engine: Engine,
    embedder: Embedder,
    settings: Settings,
    planned: int = 0,
) -> np.ndarray:
    """The embed phase: the chunks' vectors in their order, embedded in runs by all ingest children; the first
    ``planned`` runs were planned already (while the document was parsed). Also the path of a large document of
    another format (over ``ingest_shard_chunks`` chunks, parsed in one piece)."""
    step = settings.ingest_part_chunks
    runs = _runs(chunks[planned * step :], embedder=embedder, settings=settings, tail=True)
    parts.plan(engine, job_id=ctx.job_id, phase=EMBED, specs=runs, start=planned)
    fan_out(min(planned + len(runs) - 1, settings.ingest_concurrency - 1))
    _drive(ctx, EMBED, len(chunks), engine=engine, embedder=embedder, settings=settings)
    blobs = parts.results(engine, job_id=ctx.job_id, phase=EMBED)
    vectors = np.concatenate([np.frombuffer(b, dtype=np.float32).reshape(-1, embedder.dim) for b in blobs])
    if len(vectors) != len(chunks):  # a plan changed under a done part: never store mismatched vectors
        raise RuntimeError(f"sharded embedding gave {len(vectors)} vectors for {len(chunks)} chunks")
    return vectors


def _runs(chunks: list[Chunk], *, embedder: Embedder, settings: Settings, tail: bool = False) -> list[dict[str, Any]]:
    """The embed parts of ``chunks``, ``ingest_part_chunks`` each; the model is in the spec, so that vectors of
    another model (a changed setting) are planned again. ``tail``: the last chunks of the document, which every
    child should share, so runs are smaller when there are fewer chunks than runs for every child (the last
    run of a 600-page PDF was embedded by one child while the other had nothing left)."""
    step = settings.ingest_part_chunks
    if tail:
        step = max(1, min(step, -(-len(chunks) // settings.ingest_concurrency)))
    return [
        {"model": embedder.model, "texts": [c.text for c in chunks[i : i + step]]} for i in range(0, len(chunks), step)
    ]


def _drive(
    ctx: JobContext,
    phase: str,
    total: int,
    *,
    engine: Engine,
    embedder: Embedder,
    settings: Settings,
    source: Callable[[], Path] = lambda: Path("/nonexistent"),  # the document's file, for parse parts
    between: Callable[[], None] | None = None,
) -> None:
    """Do free parts of the job (of any phase), and wait for the others' parts, until all of ``phase`` are
    done; ``between`` runs after each round. A failed part fails the job with its reason."""
    while True:
        ctx.check_cancelled()
        claimed = parts.claim(engine, job_id=ctx.job_id, lease=settings.ingest_part_lease)
        if claimed is not None:
            _do(claimed, job_id=ctx.job_id, engine=engine, embedder=embedder, settings=settings, source=source)
        if between is not None:
            between()
        state = parts.state(engine, job_id=ctx.job_id, phase=phase)
        if state.failure is not None:
            code, message = state.failure
            raise (OutOfMemory if code == OutOfMemory.code else InputRejected)(message)
        ctx.progress(phase, state.size_done, total)
        if state.done == state.total:
            return
        if claimed is None:
            ctx.sleep(POLL)


def help_job(
    job_id: uuid.UUID,
    *,
    engine: Engine,
    bucket: Bucket,
    embedder: Embedder,
    settings: Settings,
    object_key: Callable[[], str | None],
) -> int:
    """A helper task's work: do free parts of the job until none is left; the number done. Returns when the
    job is not running (ended, cancelled) or has no free part, after waiting (``ingest_part_lease`` at most)
    for the embed runs that parse parts still in flight may bring. ``object_key``: the document's, looked up
    only when a parse part needs the file."""
    done = 0
    with tempfile.TemporaryDirectory(prefix="protostar-part-") as tmp:
        local: list[Path] = []

        def source() -> Path:
            if not local:
                key = object_key()
                if key is None:
                    raise InputRejected("the document was deleted while it was being ingested")
                path = Path(tmp) / "source"
                bucket.download(key, str(path))
                local.append(path)
            return local[0]

        idle_since = time.monotonic()
        while True:
            claimed = parts.claim(engine, job_id=job_id, lease=settings.ingest_part_lease)
            if claimed is None:  # while pages are parsed, embed runs may come: wait for them, a lease at most
                waited = time.monotonic() - idle_since
                if waited > settings.ingest_part_lease or not parts.in_flight(engine, job_id=job_id, phase=PARSE):
                    return done
                time.sleep(POLL)
                continue
            try:
                _do(claimed, job_id=job_id, engine=engine, embedder=embedder, settings=settings, source=source)
            except Exception:  # boundary: the lease runs out and the coordinator does the part
                logger.exception(
                    "job_id=%s part %s/%d failed here: left to another child", job_id, claimed.phase, claimed.part
                )
                return done
            done += 1
            idle_since = time.monotonic()


def _do(
    claimed: parts.Claimed,
    *,
    job_id: uuid.UUID,
    engine: Engine,
    embedder: Embedder,
    settings: Settings,
    source: Callable[[], Path],
) -> None:
    """Do one claimed part under a renewed lease and record its result, or its failure when the input is at
    fault (a reason for the user). Other errors propagate: the part stays claimed until its lease runs out."""
    with _Lease(engine, claimed, job_id=job_id, lease=settings.ingest_part_lease) as lease:
        try:
            result: bytes | None
            if claimed.phase == PARSE:
                result, size = _parse_range(source(), claimed.spec, settings=settings)
            else:
                result, size = _embed_run(claimed.spec["texts"], embedder=embedder, settings=settings, lease=lease)
        except MemoryError:
            error = OutOfMemory("a part of the document needed more memory than a worker may use")
            parts.finish(engine, claimed, job_id=job_id, error=(error.code, error.message))
            return
        except InputRejected as exc:
            parts.finish(engine, claimed, job_id=job_id, error=(exc.code, exc.message))
            return
        if result is None:  # the lease was lost: the job stopped, or another child has the part
            return
        parts.finish(engine, claimed, job_id=job_id, result=result, size=size)


def _parse_range(path: Path, spec: dict[str, Any], *, settings: Settings) -> tuple[bytes, int]:
    first, last = int(spec["first"]), int(spec["last"])
    with tempfile.TemporaryDirectory(prefix="protostar-range-") as tmp:
        target = Path(tmp) / f"pages-{first}-{last}.pdf"
        _copy_pages(path, target, first, last)
        try:
            found = parse(target, "pdf", max_pages=settings.max_pages).elements
        except InputRejected as exc:
            if exc.message.startswith(NO_TEXT):  # blank pages: nothing here, as a single pass finds nothing on them
                found = []
            else:
                raise InputRejected(f"pages {first}-{last}: {exc.message}") from exc
    offset = first - 1
    elements = [[e.text, e.type, None if e.page is None else e.page + offset] for e in found]
    return json.dumps(elements).encode(), last - first + 1


def _copy_pages(path: Path, target: Path, first: int, last: int) -> None:
    """Pages ``first``..``last`` (1-based, inclusive) of ``path`` as a PDF of their own."""
    source = pdfium.PdfDocument(str(path))
    try:
        copy = pdfium.PdfDocument.new()
        try:
            copy.import_pages(source, list(range(first - 1, last)))
            copy.save(str(target))
        finally:
            copy.close()
    finally:
        source.close()


def _embed_run(texts: list[str], *, embedder: Embedder, settings: Settings, lease: _Lease) -> tuple[bytes | None, int]:
    """Vectors of ``texts`` in their order, batched by length as the single-task path does; None when the lease
    was lost meanwhile (the job was cancelled, or another child took the part)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vectors = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    batch = settings.embedding_batch_size
    for start in range(0, len(order), batch):
        if lease.lost.is_set():
            return None, 0
        picked = order[start : start + batch]
        vectors[picked] = embedder.embed([texts[i] for i in picked])
    return vectors.astype(np.float32).tobytes(), len(texts)


class _Lease:
    """Keeps a claimed part's lease renewed from a thread; ``lost`` is set when a renewal finds the part no
    longer this holder's or the job stopped (cancelled, ended)."""

    def __init__(self, engine: Engine, claimed: parts.Claimed, *, job_id: uuid.UUID, lease: float) -> None:
        self.engine, self.claimed, self.job_id, self.lease = engine, claimed, job_id, lease
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}-{claimed.part}", daemon=True)

    def __enter__(self) -> _Lease:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                if not parts.renew(self.engine, self.claimed, job_id=self.job_id, lease=self.lease):
                    self.lost.set()
                    return
            except Exception as exc:  # noqa: BLE001 (boundary: retried next round; the lease may run out meanwhile)
                logger.warning("job_id=%s lease of part %d not renewed: %r", self.job_id, self.claimed.part, exc)
