"""Install (when needed) and start the embedded LLM in the background, publishing its state as it goes.

``protostar up`` serves everything else first: it makes a ``Launcher``, calls ``begin()``, and then ``poll()``
from its main loop. The installer (``scripts/install-llm``: the LLM half of ``scripts/_venv.sh``, a no-op
when already installed) runs as our child; its progress lines are relayed and published (``llm_state``).
When it succeeds, ``poll()`` starts llama-server through the stack, from the calling thread (services die
with the thread that spawned them), and answers True once: the moment to start the workers that need it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis

from protostar.errors import ServiceError
from protostar.runtime import process
from protostar.runtime.llm_state import LLMState, write_state
from protostar.runtime.stack import Stack

logger = logging.getLogger(__name__)

_PERCENT = re.compile(r"\[\s*(\d{1,3})%\]")
_REFRESH = 15.0  # seconds between rewrites of the state key (its TTL is longer)


def installer_command() -> list[str] | None:
    """``scripts/install-llm`` of the checkout we run from, when we run from its ``.venv`` (as ``scripts/up``
    starts us); None otherwise (an installed package: the LLM is installed with it, or not at all)."""
    repo = Path(__file__).resolve().parents[2]
    script = repo / "scripts" / "install-llm"
    venv = repo / ".venv"
    if script.is_file() and venv.exists() and Path(sys.prefix).resolve() == venv.resolve():
        return ["/bin/bash", str(script)]
    return None


class Launcher:
    def __init__(
        self,
        stack: Stack,
        client: redis.Redis,
        *,
        installer: list[str] | None,
        say: Callable[[str], None],
        start_timeout: float = 120.0,
    ) -> None:
        self.stack = stack
        self.client = client
        self.installer = installer
        self.say = say
        self.start_timeout = start_timeout
        self.state = LLMState.BUILDING
        self.detail = "checking the llama-server install"
        self.progress: int | None = None
        self._since = time.time()
        self._published = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._relay: threading.Thread | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=15)
        self._lock = threading.Lock()

    # --- driven by the caller's thread ----------------------------------------------------------------

    def begin(self) -> None:
        """Start the installer, or the server at once when there is no installer to run."""
        self._publish()
        if self.installer is None:
            return
        try:
            # Not our settings: the operator's secrets (PROTOSTAR_*) have no business in a build.
            env = {k: v for k, v in os.environ.items() if not k.startswith("PROTOSTAR_")}
            self._proc = process.spawn(self.installer, name="llm installer", stdout=subprocess.PIPE, env=env)
        except ServiceError as exc:
            self._set(LLMState.FAILED, str(exc))
            return
        self._relay = threading.Thread(target=self._read_installer, name="llm-installer", daemon=True)
        self._relay.start()

    def poll(self) -> bool:
        """Move on when the installer has finished; True exactly once: when the LLM has just become ready."""
        if self.state is LLMState.BUILDING and (self._proc is None or self._proc.poll() is not None):
            if self._relay is not None:
                self._relay.join(5)  # the last lines, before we judge
            code = self._proc.returncode if self._proc is not None else 0
            if code != 0:
                tail = "\n".join(self._tail)
                self._set(LLMState.FAILED, f"installing llama-server failed (exit code {code}): {tail[-600:]}")
                self.say(f"the embedded LLM could not be installed; chat and summary jobs stay queued.\n{tail}")
                return False
            return self._start_server()
        if time.monotonic() - self._published >= _REFRESH:
            self._publish()
        return False

    def stop(self) -> None:
        """Stop the installer and its children (pip, the compiler) if they still run. Never raises.

        A compile stopped halfway starts over at the next start.
        """
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGTERM)  # its own process group: see process.spawn
            process.stop(self._proc, timeout=5)

    # --- the steps ------------------------------------------------------------------------------------

    def _start_server(self) -> bool:
        self._set(LLMState.STARTING, "loading the model")
        try:
            self.stack.start_llm(self.start_timeout)
        except ServiceError as exc:
            self._set(LLMState.FAILED, exc.message)
            self.say(f"the embedded LLM did not start; chat and summary jobs stay queued: {exc.message}")
            return False
        llm = self.stack.llm
        self._set(LLMState.READY, f"{llm.base_url} model={llm.model}" if llm else "")
        return True

    def _read_installer(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if not line or self.state is not LLMState.BUILDING:
                continue
            self._tail.append(line)
            self.say(f"{'llm-build':<14}| {line}")
            match = _PERCENT.search(line)
            if match:  # make finishes targets out of order: the percentages wobble, the progress does not
                progress = max(int(match.group(1)), self.progress or 0)
                self._set(LLMState.BUILDING, f"compiling llama-server: {progress}% ({line.strip()})", progress)
            else:
                self._set(LLMState.BUILDING, line.strip(), self.progress)

    def _set(self, state: LLMState, detail: str, progress: int | None = None) -> None:
        with self._lock:
            if state is not self.state:
                self._since = time.time()
            self.state, self.detail, self.progress = state, detail, progress
        self._publish()

    def _publish(self) -> None:
        with self._lock:
            state, detail, progress, since = self.state, self.detail, self.progress, self._since
        try:
            write_state(self.client, state, detail=detail, progress=progress, since=since)
            self._published = time.monotonic()
        except redis.RedisError as exc:
            logger.warning("could not publish the LLM state %s: %s", state, exc)
