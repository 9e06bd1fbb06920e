"""Run a set of processes in the foreground, their output prefixed by name, and stop them all together."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import IO

from protostar.runtime import process

logger = logging.getLogger(__name__)

COLORS = ("\033[36m", "\033[32m", "\033[33m", "\033[35m", "\033[34m", "\033[96m", "\033[92m")
RESET = "\033[0m"


@dataclass
class Supervisor:
    env: dict[str, str]
    out: IO[str] = sys.stdout
    stop_timeout: float = 8.0
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    _width: int = 14
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> None:
        proc = process.spawn(argv, name=name, env={**self.env, **(extra_env or {})}, stdout=subprocess.PIPE)
        color = COLORS[len(self.procs) % len(COLORS)] if self.out.isatty() else ""
        self.procs.append((name, proc))
        threading.Thread(target=self._relay, args=(name, proc, color), daemon=True).start()

    def _relay(self, name: str, proc: subprocess.Popen[bytes], color: str) -> None:
        assert proc.stdout is not None
        prefix = f"{color}{name:<{self._width}}|{RESET if color else ''} "
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            with self._lock:
                self.out.write(prefix + line + "\n")
                self.out.flush()

    def say(self, text: str) -> None:
        with self._lock:
            self.out.write(text + "\n")
            self.out.flush()

    def wait(self, tick: Callable[[], None] | None = None) -> str | None:
        """Block until a signal arrives or a process exits; returns the name of a process that exited.

        ``tick``, if given, runs every half second on this thread (so what it spawns lives as long as we do).
        """
        stop = threading.Event()
        with _signals(stop):
            while not stop.wait(0.5):
                for name, proc in self.procs:
                    if proc.poll() is not None:
                        return name
                if tick is not None:
                    tick()
        return None

    def stop_all(self) -> None:
        """SIGTERM everything at once (so the stop takes one timeout, not one per process), then SIGKILL."""
        threads = [
            threading.Thread(target=process.stop, args=(proc,), kwargs={"timeout": self.stop_timeout})
            for _, proc in reversed(self.procs)
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + self.stop_timeout + 5
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))


@contextmanager
def _signals(stop: threading.Event) -> Iterator[None]:
    def handler(signum: int, _: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
