"""The ingest benchmark's processes beside the system under test: the baseline parser (``bench.ingest.bare_parse``,
driven by :class:`BareParser`) and a sampler of the ingest worker's pool children's memory."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from bench.common import ROOT
from bench.ingest.bare_parse import vm_kb


class BareParser:
    """The baseline parser process (``bench.ingest.bare_parse``), warm, answering one file at a time."""

    def __init__(self, warm_with: Path, log: IO[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.ingest.bare_parse", str(warm_with)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=ROOT,
        )
        self._read()  # ready

    def parse(self, path: Path) -> float:
        return float(self._ask({"path": str(path)})["seconds"])

    def peak_rss_kb(self) -> int:
        return int(self._ask({"stats": 1})["vmhwm_kb"])

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("@@ "):
                return dict(json.loads(line[3:]))
        raise RuntimeError(f"the baseline parser exited ({self.proc.wait()}); see bench/results/ingest.log")

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Peak:
    hwm_kb: int = 0  # the largest VmHWM of a pool child: its peak RSS, as the kernel counted it
    children: set[int] = field(default_factory=set)  # pool children seen
    helpers: dict[str, int] = field(default_factory=dict)  # their own child processes (converters): name -> HWM


class MemorySampler(threading.Thread):
    """Peak RSS of a worker's pool children (its direct children), per labelled phase: the kernel's high-water
    mark (``VmHWM``, so nothing is missed between samples), and a timeline of their RSS, read every ``every``
    seconds, to tell which job made a peak. Processes the children start (document converters) are counted
    apart."""

    def __init__(self, worker_pid: int, every: float = 0.2) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.worker_pid, self.every = worker_pid, every
        self.label = ""
        self.peaks: dict[str, Peak] = {}
        self.timeline: list[tuple[float, int]] = []  # (time.time(), largest pool-child RSS in kB)
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.every):
            try:
                children = psutil.Process(self.worker_pid).children()
            except psutil.NoSuchProcess:
                return
            peak = self.peaks.setdefault(self.label, Peak())
            rss = 0
            for child in children:
                peak.children.add(child.pid)
                peak.hwm_kb = max(peak.hwm_kb, vm_kb(child.pid, "VmHWM"))
                rss = max(rss, vm_kb(child.pid, "VmRSS"))
                try:
                    helpers = child.children(recursive=True)
                except psutil.NoSuchProcess:
                    continue
                for helper in helpers:
                    try:
                        name = helper.name()
                    except psutil.NoSuchProcess:
                        continue
                    peak.helpers[name] = max(peak.helpers.get(name, 0), vm_kb(helper.pid, "VmHWM"))
            self.timeline.append((time.time(), rss))

    def peak_between(self, start: float, end: float) -> int:
        """The largest pool-child RSS (kB) sampled between two times (0 when no sample fell in between)."""
        return max((rss for at, rss in self.timeline if start <= at <= end), default=0)

    def rss_before(self, moment: float) -> int:
        """The last pool-child RSS (kB) sampled before ``moment``."""
        return next((rss for at, rss in reversed(self.timeline) if at < moment), 0)

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=5)
