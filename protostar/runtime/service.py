"""What every embedded service shares: one child process under ``data_dir``, started, awaited and stopped alike.

A subclass names itself and its log file, says how to spawn the server (``_command``), how to tell that it
answers (``_answers``) and, where it has more to do, what follows readiness (``_after_ready``) or the stop
(``_after_stop``). The base does the rest the same way for all: refuse a busy port naming the setting to
change, run as the system user when we are root and the server refuses root, tie the child to our life with
its stop signal, poll until it answers or dies, and stop it with that signal, SIGKILL after a timeout.

Who runs as whom, started as root: PostgreSQL refuses to run as root, so it runs as the system user
``protostar``, with its data directory placed where that user can reach it (``placement.py``). Redis, weed
and llama-server run as the user who started us, like the API and the workers they serve: those parse every
uploaded file as that user already, so a separate user for the three servers behind them (loopback-bound,
each behind its own key) would add little safety and cost the reach problem for their binaries and data.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from protostar.runtime import placement, process


@dataclass(kw_only=True)
class EmbeddedService(ABC):
    data_dir: Path
    port: int
    host: str = "127.0.0.1"
    system_user: str = process.SERVICE_USER  # used only when we run as root and the server refuses root
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    name: ClassVar[str]  # in logs, errors and the port's setting (PROTOSTAR_<NAME>_PORT)
    title: ClassVar[str]  # in "embedded <title> on host:port" when it does not start
    log_name: ClassVar[str]  # the log file under data_dir
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    death_signal: ClassVar[signal.Signals | None] = None  # sent when we die; None: ``stop_signal``
    refuses_root: ClassVar[bool] = False  # True: as root, run as ``system_user`` (see the module doc)
    start_timeout: ClassVar[float] = 30.0
    stop_timeout: ClassVar[float] = 10.0
    poll_interval: ClassVar[float] = 0.05

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()

    @property
    def log_file(self) -> Path:
        return self.data_dir / self.log_name

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def exit_code(self) -> int | None:
        """The code the server exited with (negative: killed by that signal); None while it runs or unstarted."""
        return self._proc.poll() if self._proc is not None else None

    def start(self, timeout: float | None = None) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the server process without waiting for it (see ``wait_ready``)."""
        if self.pid is not None:
            return
        process.ensure_port_free(self.host, self.port, self.name)
        owner = process.service_user(self.system_user) if self.refuses_root else None
        if owner is not None:
            self.data_dir = placement.data_dir_for(self.data_dir, owner)
        process.prepare_dir(self.data_dir, owner=owner)
        argv, env = self._command(owner)
        self._proc = process.spawn(
            argv,
            name=self.name,
            log_file=self.log_file,
            env=env,
            run_as=owner.name if owner else None,
            death_signal=self.death_signal or self.stop_signal,
            cwd=self.data_dir,
        )

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll ``_answers`` until it holds, then finish with ``_after_ready`` within the same ``timeout``."""
        timeout = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        process.wait_until(
            self._answers,
            timeout=timeout,
            what=f"embedded {self.title} on {self.host}:{self.port}",
            proc=self._proc,
            log_file=self.log_file,
            interval=self.poll_interval,
        )
        self._after_ready(deadline)
        self._logger.info("%s ready on %s", self.name, self._ready_detail())

    def stop(self, timeout: float | None = None) -> None:
        """Send ``stop_signal``, then SIGKILL after ``timeout``. A no-op when not running."""
        if self._proc is not None:
            timeout = self.stop_timeout if timeout is None else timeout
            process.stop(self._proc, sig=self.stop_signal, timeout=timeout)
            self._logger.info("%s stopped (pid=%d)", self.name, self._proc.pid)
            self._proc = None
            self._after_stop()

    # --- hooks ----------------------------------------------------------------------------------------

    @abstractmethod
    def _command(self, owner: process.ServiceUser | None) -> tuple[list[str], dict[str, str]]:
        """Prepare what the server needs under ``data_dir`` (made and owned by ``owner``); return argv and env."""

    @abstractmethod
    def _answers(self) -> bool:
        """Whether the server answers yet (False while it starts; raise for what waiting cannot fix)."""

    def _after_ready(self, deadline: float) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Work left once the server answers, to finish before ``deadline`` (``time.monotonic()``)."""

    def _ready_detail(self) -> str:
        """Where the server is ready, for the log line."""
        return f"{self.host}:{self.port}"

    def _after_stop(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Clean-up once the process has exited."""

    @property
    def _logger(self) -> logging.Logger:
        return logging.getLogger(type(self).__module__)  # the service's own module, as its other lines
