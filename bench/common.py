"""What every benchmark shares: where results go, percentiles and CPU times, waiting for a process to settle,
the share of the machine others took, the command line's parser (:func:`arguments`), the report (a table
of :class:`Row` rendered by :func:`markdown`, written and printed by :func:`publish`), and the questions of
the shared corpus ``tests/corpus/qa.jsonl`` (:func:`qa_questions`: ``bench.ingest`` and ``bench.quality`` ask them).

Imports nothing from ``bench`` and nothing of Protostar: every benchmark may import it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CORPUS = ROOT / "tests" / "corpus"  # real documents (see its ABOUT.md) and the questions about them, qa.jsonl


@dataclass(frozen=True)
class QaQuestion:
    """A question of ``qa.jsonl``: a hit answers it when it is a chunk of ``document`` holding an ``evidence``."""

    question: str
    document: str
    evidence: tuple[str, ...]

    def answered_by(self, filename: str, text: str) -> bool:
        return filename == self.document and any(e in text for e in self.evidence)


def qa_questions() -> list[QaQuestion]:
    out = []
    for line in (CORPUS / "qa.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            out.append(QaQuestion(row["question"], row["document"], tuple(row["evidence"])))
    return out


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def cpu_of(pid: int | None, *, system_only: bool = False) -> float:
    """CPU seconds of a process tree: the process, its live descendants and the children it reaped."""
    if pid is None:
        return 0.0
    try:
        proc = psutil.Process(pid)
        t = proc.cpu_times()
        total = t.system + t.children_system
        if not system_only:
            total += t.user + t.children_user
        for child in proc.children(recursive=True):
            try:
                ct = child.cpu_times()
                total += ct.system if system_only else ct.user + ct.system
            except psutil.NoSuchProcess:
                pass
        return total
    except psutil.NoSuchProcess:
        return 0.0


def wait_idle(pid: int | None, name: str, *, below: float = 0.05, window: float = 0.5, timeout: float = 90) -> None:
    """Wait until a process tree stops burning CPU (e.g. the API loading a model in a background thread)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = cpu_of(pid)
        time.sleep(window)
        if (cpu_of(pid) - before) / window < below:
            waited = time.monotonic() - started
            if waited > 2 * window:
                print(f"  ({name} was busy warming up for {waited:.0f} s; waited until idle)", flush=True)
            return
    print(f"  note: {name} still busy after {timeout:.0f} s; measuring anyway", flush=True)


class MachineShare:
    """How much CPU processes outside this run took while it measured: the noise behind its figures."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float, float]:
        t = psutil.cpu_times()
        busy = sum(t) - t.idle - getattr(t, "iowait", 0.0)
        return time.perf_counter(), busy, cpu_of(os.getpid()), getattr(t, "steal", 0.0)

    def describe(self) -> str:
        wall0, busy0, ours0, steal0 = self.start
        wall1, busy1, ours1, steal1 = self._sample()
        wall, cpus = wall1 - wall0, os.cpu_count() or 1
        others = max(0.0, (busy1 - busy0) - (ours1 - ours0) - (steal1 - steal0)) / wall
        steal = (steal1 - steal0) / wall
        text = (
            f"While measuring, processes outside this run used {others:.2f} of the {cpus} CPUs on average "
            f"(this run: {(ours1 - ours0) / wall:.2f}; hypervisor steal {steal:.2f})."
        )
        if others > 0.15 * cpus or steal > 0.1 * cpus:
            text += " The machine was shared: absolute figures are noisy, compare the ratios (same run)."
        return text


def arguments(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of ``python -m bench.<name>``, with the benchmark's docstring as its description."""
    return argparse.ArgumentParser(
        prog=f"python -m bench.{name}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


@dataclass
class Row:
    metric: str
    value: str
    baseline: str
    ratio: str
    goal: str = ""


def markdown(
    name: str,
    run: str,
    elapsed: float,
    rows: list[Row],
    *,
    ratio: str = "ratio",
    extra: list[str] | None = None,
    notes: list[str] | None = None,
) -> str:
    """A benchmark's report: title, what ran (``run``, after the command, commit and machine), the table of
    ``rows``, then ``extra`` lines and ``notes`` as a list."""
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True, cwd=ROOT)
    lines = [
        f"# {name.capitalize()} benchmark — {dt.datetime.now().isoformat(timespec='seconds')}",
        "",
        f"`.venv/bin/python -m bench.{name}` · git {rev.stdout.strip() or '?'} (+ working tree) · "
        f"{os.cpu_count()} CPUs · Python {platform.python_version()} · {elapsed:.0f} s run · {run}",
        "",
        f"| figure | Protostar | baseline (same run) | {ratio} | goal |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {r.metric} | {r.value} | {r.baseline} | {r.ratio} | {r.goal} |" for r in rows],
    ]
    if extra:
        lines += ["", *extra]
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def publish(name: str, text: str) -> None:
    """Write a benchmark's report to ``bench/results/<name>.md`` and print it, with where its log is."""
    report = RESULTS / f"{name}.md"
    report.write_text(text)
    print()
    print(text)
    print(f"written to {report}; process output in {RESULTS / f'{name}.log'}")
