"""Read text from page images with RapidOCR (``rapidocr-onnxruntime``), offline. Worker processes only.

The OCR models (PP-OCRv4 detection and recognition, a direction classifier) ship inside the wheel and run on
ONNX Runtime: nothing is downloaded, ever. :func:`engine` imports the package and loads the models on first use
in a process (an ingest child that never meets a scan never pays for it: about 0.3 s and 40 MB), and
:func:`release` drops them after the task that used them (the ingest tasks do, before trimming the heap: about
20 MB back, a reload costs 0.2 s); one ONNX thread per process, since the prefork children already take one core
each. Nothing here imports ``rapidocr_onnxruntime`` at module import, so importing this module is cheap and the
API never sees it.

The text detector sees the page with its longest side at most ``DET_MAX_SIDE`` pixels (PaddleOCR's own default
for PP-OCR detection); the lines it finds are still cut from the full-size page for recognition. On a whole
2,000-pixel page the detector's activations took 550-620 MB (ONNX Runtime's memory pattern, planned after the
first run of a shape, is one block for all of them) and it found worse boxes: lines of two columns run together,
words without spaces. At 960 pixels: about 150 MB, and 0.86 of the words of six corpus pages found instead of
0.31 (measured in a process like an ingest child, pages scanned at 150 DPI and rendered at 200).

Pages are handled one at a time, each image dropped before the next is made: a PDF page is rendered by PDFium at
``OcrLimits.dpi`` (its longest side at most ``MAX_SIDE`` pixels), an image file's frames are decoded by Pillow
and shrunk to the same bound. Each page has a budget of CPU time (``OcrLimits.page_seconds``: CPU seconds of
the process, so that a page is not skipped because other processes took the cores; a dense two-column page
takes about 9 in a bare process, about 15 in a warmed ingest child), enforced with ``ITIMER_PROF``/``SIGPROF``
in the main thread (the prefork child runs tasks there; billiard's soft time limit uses ``SIGUSR1`` and
pytest-timeout ``SIGALRM``, so they do not meet; a profiling timer someone else had set is put back
afterwards): the signal interrupts OCR between two ONNX runs.
Elsewhere (a thread pool) the budget is checked, in CPU time, when the page ends.

:func:`page_text` turns RapidOCR's boxes into lines (boxes whose vertical centres fall within half a line
height are one line, read left to right) and lines into paragraphs (a gap taller than a line starts a new one).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from protostar.settings import Settings

logger = logging.getLogger(__name__)

MAX_SIDE = 2000
"""Longest side, in pixels, of an image handed to OCR (RapidOCR shrinks anything larger to this itself)."""

DET_MAX_SIDE = 960
"""Longest side, in pixels, of the image the text detector reads (RapidOCR's ``Det.limit_side_len`` with
``limit_type: max``)."""

MAX_IMAGE_PIXELS = 80_000_000
"""An image file whose frame has more pixels than this is refused before it is decoded (a decompression bomb
would otherwise take gigabytes)."""


@dataclass(frozen=True)
class OcrLimits:
    max_pages: int = 25
    page_seconds: float = 60.0
    min_chars: int = 20
    dpi: int = 200

    @classmethod
    def from_settings(cls, settings: Settings) -> OcrLimits:
        return cls(
            max_pages=settings.ocr_max_pages,
            page_seconds=settings.ocr_page_seconds,
            min_chars=settings.ocr_min_chars,
            dpi=settings.ocr_dpi,
        )


@dataclass
class OcrReport:
    """What OCR did to one document: pages read, and pages skipped with the reason (for the job's result)."""

    pages: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def skip(self, page: int, reason: str) -> None:
        last = self.skipped[-1] if self.skipped else None
        if last is not None and last["reason"] == reason and last["last_page"] == page - 1:
            last["last_page"] = page  # a run of pages skipped for one reason is one entry
        else:
            self.skipped.append({"page": page, "last_page": page, "reason": reason})

    def as_result(self) -> dict[str, Any]:
        return {"pages": self.pages, "skipped": list(self.skipped)}


def usable_text_layer(text: str, min_chars: int) -> bool:
    """A page's text layer is usable when it has at least ``min_chars`` characters other than whitespace: a
    page number or a running header alone is not (the page is then read by OCR)."""
    return sum(1 for char in text if not char.isspace()) >= min_chars


class PageTimeout(BaseException):
    """A page ran out of its OCR time budget. A ``BaseException``, like ``KeyboardInterrupt``: RapidOCR wraps
    the ``Exception``s raised inside its steps in errors of its own, which would hide the timeout."""


@functools.cache
def engine() -> Any:
    """RapidOCR with its bundled models, loaded once per process."""
    started = time.perf_counter()
    from rapidocr_onnxruntime import RapidOCR  # type: ignore[import-untyped]
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess  # type: ignore[import-untyped]

    ocr = RapidOCR(
        intra_op_num_threads=1,
        inter_op_num_threads=1,
        print_verbose=False,
        det_limit_type="max",
        det_limit_side_len=DET_MAX_SIDE,
    )
    # RapidOCR 1.4 replaces a "max" limit by 960, 1,500 or 2,000 after the image's size, whatever was configured
    # (RapidAI/RapidOCR#740, open): the detector's preprocessing with the configured limit.
    det = ocr.text_det
    det.get_preprocess = lambda _longest: DetPreProcess(det.limit_side_len, det.limit_type, det.mean, det.std)
    logger.info("OCR models loaded in %.1f s", time.perf_counter() - started)
    return ocr


def release() -> None:
    """Drop the OCR models, if loaded; the next page loads them again. The caller trims the heap afterwards."""
    engine.cache_clear()


def read_page(image: Any, *, seconds: float) -> list[str]:
    """The paragraphs OCR finds in ``image`` (an RGB numpy array); raises :class:`PageTimeout` past ``seconds``
    of CPU time."""
    started = time.process_time()
    with _alarm(seconds):
        result, _ = engine()(image)
    if time.process_time() - started > seconds:
        raise PageTimeout
    return page_text(result or [])


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        raise PageTimeout

    previous = signal.signal(signal.SIGPROF, expire)
    started = time.process_time()
    outer, _ = signal.setitimer(signal.ITIMER_PROF, seconds)
    if outer:  # someone else's profiling timer was set: ours must not outlive it
        signal.setitimer(signal.ITIMER_PROF, min(seconds, outer))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)
        if outer:  # put it back with what was left of it
            signal.setitimer(signal.ITIMER_PROF, max(outer - (time.process_time() - started), 0.001))


def page_text(boxes: Sequence[Sequence[Any]]) -> list[str]:
    """Paragraphs from RapidOCR's ``[corners, text, score]`` boxes, in reading order (top to bottom, then
    left to right within a line)."""
    items = []
    for corners, found, _score in boxes:
        text = str(found).strip()
        if not text:
            continue
        ys = [float(point[1]) for point in corners]
        xs = [float(point[0]) for point in corners]
        items.append((min(ys), max(ys), min(xs), text))
    if not items:
        return []
    items.sort()
    lines: list[tuple[float, float, list[tuple[float, str]]]] = []  # top, bottom, (x, text) of each box
    for top, bottom, left, text in items:
        if lines:
            line_top, line_bottom, words = lines[-1]
            centre = (top + bottom) / 2
            height = max(line_bottom - line_top, 1.0)
            if abs(centre - (line_top + line_bottom) / 2) <= height / 2:
                words.append((left, text))
                lines[-1] = (min(line_top, top), max(line_bottom, bottom), words)
                continue
        lines.append((top, bottom, [(left, text)]))
    heights = sorted(bottom - top for top, bottom, _ in lines)
    line_height = max(heights[len(heights) // 2], 1.0)
    paragraphs: list[list[str]] = []
    previous_bottom: float | None = None
    for top, bottom, words in lines:
        text = " ".join(word for _, word in sorted(words))
        if previous_bottom is None or top - previous_bottom > line_height:
            paragraphs.append([text])
        else:
            paragraphs[-1].append(text)
        previous_bottom = bottom
    return ["\n".join(paragraph) for paragraph in paragraphs]


def render_pdf_page(document: Any, index: int, *, dpi: int) -> Any:
    """Page ``index`` (0-based) of an open ``pypdfium2.PdfDocument`` as an RGB numpy array."""
    page = document[index]
    try:
        width, height = page.get_size()  # points
        scale = min(dpi / 72, MAX_SIDE / max(width, height, 1.0))
        bitmap = page.render(scale=scale)
        try:
            return bitmap.to_numpy()[:, :, :3].copy()  # BGR(A) from PDFium; RapidOCR reads colour either way
        finally:
            bitmap.close()
    finally:
        page.close()


def image_frames(path: Any) -> Iterator[Any]:
    """Each frame of an image file (one for PNG and JPEG, each page of a TIFF) as an RGB numpy array, one at
    a time. Raises ``ValueError`` for a frame over :data:`MAX_IMAGE_PIXELS`."""
    import numpy as np
    from PIL import Image, ImageSequence

    with Image.open(path) as image:
        for frame in ImageSequence.Iterator(image):
            if frame.width * frame.height > MAX_IMAGE_PIXELS:
                raise ValueError(f"an image of {frame.width}x{frame.height} pixels is over the limit")
            if frame.format == "JPEG" or image.format == "JPEG":
                frame.draft("RGB", (MAX_SIDE, MAX_SIDE))  # decode at a reduced size straight away
            rgb = frame.convert("RGB")
            rgb.thumbnail((MAX_SIDE, MAX_SIDE))
            yield np.asarray(rgb)


def count_frames(path: Any) -> int:
    from PIL import Image

    with Image.open(path) as image:
        return int(getattr(image, "n_frames", 1))
