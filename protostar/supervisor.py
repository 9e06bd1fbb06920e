"""Keep a set of units running in the foreground, restart what dies, and stop them all together.

A *unit* is anything with ``launch``, ``wait_ready``, ``alive`` and ``stop``: a ``Program`` (a command line
run as our child, its output relayed prefixed by its name) or a ``Service`` (an embedded Redis, PostgreSQL, S3
store or LLM, restarted on its port and data directory). One loop looks after both:

    supervisor = Supervisor(env=env, policy=RestartPolicy.from_settings(settings))
    supervisor.watch(stack.redis)                    # already running: watched from now on
    supervisor.start("api", commands.api(settings))  # started now
    gave_up = supervisor.wait()                      # protostar up: the loop on this thread, until a signal
    supervisor.keep_alive()                          # or the same loop on a thread of its own (the tests)
    supervisor.stop_all()

A unit that exits is restarted after a capped, jittered backoff (``backoff.delay``), with a line saying so.
One that fails to *start* more than ``policy.limit`` times within ``policy.window`` seconds makes the supervisor
give up: ``wait`` returns its name (``keep_alive`` stops everything itself). As supervisord's ``startsecs``: a
death counts as a failed start only when the unit had run less than ``policy.min_uptime``; one that ran longer
(killed from outside, an out-of-memory kill, a crash after hours) is restarted with a fresh count, so a storm of
kills on a running worker never makes ``up`` give up, while a crash loop (a bad setting, a port taken) does.
Once ``stop_all`` begins, nothing is restarted.

Restarts happen on the thread that runs the loop: children die with the thread that spawned them
(``process.spawn``), so that thread must live as long as they should.

Stop signals (``runtime.signals``): ``wait`` installs the handlers unless some are installed already (by
``protostar up``, from its first line), and checks for a stop signal noted but not raised after each launch
and each look.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, ClassVar, Protocol

import psutil

from protostar import backoff
from protostar.errors import ServiceError
from protostar.runtime import process, signals
from protostar.runtime.service import EmbeddedService
from protostar.settings import Settings

logger = logging.getLogger(__name__)

COLORS = ("\033[36m", "\033[32m", "\033[33m", "\033[35m", "\033[34m", "\033[96m", "\033[92m")
RESET = "\033[0m"
_TICK = 0.5  # seconds between looks at the units


# --- units ----------------------------------------------------------------------------------------------


class Unit(Protocol):
    @property
    def name(self) -> str: ...

    stops_last: ClassVar[bool]  # services: stopped after every program (the programs use them)

    def launch(self) -> None:
        """Start it without waiting (quick: run under the supervisor's lock)."""

    def wait_ready(self) -> None:
        """Wait until it serves; raise ServiceError when it will not."""

    def alive(self) -> bool: ...

    @property
    def pid(self) -> int | None: ...

    def exit_status(self) -> str:
        """How it ended, for the log line ("code 1", "killed by SIGKILL")."""

    def stop(self, timeout: float) -> None:
        """Stop it (a no-op when it is not running). Never raises."""


def describe_exit(code: int | None) -> str:
    if code is None:
        return "not running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"code {code}"


@dataclass
class Program:
    """A command line run as our child, in its own process group, its output handed to ``relay``."""

    name: str
    argv: list[str]
    env: dict[str, str]
    relay: Callable[[Program, subprocess.Popen[bytes]], None]
    proc: subprocess.Popen[bytes] | None = None
    stops_last: ClassVar[bool] = False

    def launch(self) -> None:
        if self.proc is not None:
            _kill_leftovers(self.proc)
        self.proc = process.spawn(self.argv, name=self.name, env=self.env, stdout=subprocess.PIPE)
        self.relay(self, self.proc)

    def wait_ready(self) -> None:
        return None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.alive() and self.proc is not None else None

    def exit_status(self) -> str:
        return describe_exit(self.proc.poll() if self.proc is not None else None)

    def stop(self, timeout: float) -> None:
        if self.proc is not None:
            process.stop(self.proc, timeout=timeout)
            _kill_leftovers(self.proc)


def _kill_leftovers(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL what is left of a dead program's process group (a killed prefork worker's pool children).

    Only while members other than the (reaped) leader remain: the kernel keeps a process group's id from
    being reused until its last member is gone, so the group is still the one we started.
    """
    if proc.poll() is None:
        return
    members = []
    for pid in psutil.pids():
        with contextlib.suppress(OSError):
            if pid != proc.pid and os.getpgid(pid) == proc.pid:
                members.append(pid)
    if members:
        logger.info("killing %d leftover process(es) of pid=%d's group", len(members), proc.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


@dataclass
class Service:
    """An embedded service as a unit: restarted on the same port and data directory."""

    service: EmbeddedService
    stops_last: ClassVar[bool] = True

    @property
    def name(self) -> str:
        return self.service.name

    def launch(self) -> None:
        self.service.stop()  # forget the dead process (and run the service's clean-up after a stop)
        self.service.launch()

    def wait_ready(self) -> None:
        self.service.wait_ready()

    def alive(self) -> bool:
        return self.service.pid is not None

    @property
    def pid(self) -> int | None:
        return self.service.pid

    def exit_status(self) -> str:
        return describe_exit(self.service.exit_code)

    def stop(self, timeout: float) -> None:
        try:
            self.service.stop()  # its own timeout: some servers take longer to flush than a program
        except Exception:
            logger.exception("could not stop the embedded %s", self.name)


# --- the supervisor -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestartPolicy:
    limit: int = 5  # failed starts allowed within ``window``; one more and we give up
    window: float = 120.0  # seconds
    min_uptime: float = 5.0  # seconds: a unit that dies sooner after its start failed to start
    backoff: float = 0.5  # seconds: the first restart waits up to this, each next one up to twice as long
    backoff_cap: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RestartPolicy:
        return cls(
            limit=settings.restart_limit,
            window=settings.restart_window,
            min_uptime=settings.restart_min_uptime,
            backoff=settings.restart_backoff,
            backoff_cap=settings.restart_backoff_cap,
        )


@dataclass
class _Watched:
    unit: Unit
    color: str
    started: float = field(default_factory=time.monotonic)
    deaths: collections.deque[float] = field(default_factory=collections.deque)
    due: float | None = None  # when it dies: when to restart it


@dataclass
class Supervisor:
    env: dict[str, str]
    # What a program named so gets of ``env`` (its secrets only: ``commands.environment``); None: all of it.
    scope: Callable[[str, dict[str, str]], dict[str, str]] | None = None
    out: IO[str] = sys.stdout
    stop_timeout: float = 8.0
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    gave_up: str | None = field(default=None, init=False)  # the unit that made us give up
    _units: dict[str, _Watched] = field(default_factory=dict, init=False)
    _width: int = 14
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False)  # the units, and stopping
    _out_lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _stopping: threading.Event = field(default_factory=threading.Event, init=False)
    _keeper: threading.Thread | None = field(default=None, init=False)

    # --- what is supervised ---------------------------------------------------------------------------

    def start(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> None:
        """Start ``argv`` as the program ``name`` and supervise it (replacing a stopped one of that name)."""
        env = {**self.env, **(extra_env or {})}
        program = Program(name, argv, self.scope(name, env) if self.scope else env, self._relay_output)
        with self._lock:
            if self._stopping.is_set():
                return
            if (old := self._units.get(name)) is not None and old.unit.alive():
                raise ServiceError(f"{name} is already running")
            self._add(program)
            program.launch()
        self._checkpoint()

    def watch(self, service: EmbeddedService) -> None:
        """Supervise an embedded service that is already running."""
        with self._lock:
            self._add(Service(service))

    def reconfigure(self, name: str, argv: list[str]) -> None:
        """The command line the program ``name`` gets at its next restart."""
        with self._lock:
            unit = self._units[name].unit
            if isinstance(unit, Program):
                unit.argv = argv

    def stop(self, name: str) -> None:
        """Stop one unit and stop supervising it."""
        with self._lock:
            watched = self._units.pop(name, None)
        if watched is not None:
            watched.unit.stop(self.stop_timeout)

    def _add(self, unit: Unit) -> None:
        color = COLORS[len(self._units) % len(COLORS)] if self.out.isatty() else ""
        self._units[unit.name] = _Watched(unit, color)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._units)

    def pid(self, name: str) -> int | None:
        """The current pid of unit ``name``; None while it is down (or unknown)."""
        with self._lock:
            watched = self._units.get(name)
            return watched.unit.pid if watched is not None else None

    # --- output ---------------------------------------------------------------------------------------

    def _relay_output(self, program: Program, proc: subprocess.Popen[bytes]) -> None:
        color = self._units[program.name].color if program.name in self._units else ""
        threading.Thread(target=self._relay, args=(program.name, proc, color), daemon=True).start()

    def _relay(self, name: str, proc: subprocess.Popen[bytes], color: str) -> None:
        assert proc.stdout is not None
        prefix = f"{color}{name:<{self._width}}|{RESET if color else ''} "
        for raw in proc.stdout:
            self.say(prefix + raw.decode(errors="replace").rstrip())

    def say(self, text: str) -> None:
        with self._out_lock:
            self.out.write(text + "\n")
            self.out.flush()

    # --- the loop -------------------------------------------------------------------------------------

    def wait(self, tick: Callable[[], None] | None = None) -> str | None:
        """Look after the units on this thread until a stop signal (None) or we give up (the unit's name).

        ``tick``, if given, runs every half second on this thread (so what it spawns lives as long as we do).
        """
        with signals.stop_signals() if signals.installed() is None else contextlib.nullcontext():
            try:
                while not self._stopping.wait(_TICK):
                    if (gave_up := self.check()) is not None:
                        return gave_up
                    if tick is not None:
                        tick()
                        self._checkpoint()
            except signals.Interrupted:
                return None
        return None

    def _checkpoint(self) -> None:
        signals.checkpoint()  # on the main thread: a stop signal noted during a launch (see runtime.signals)

    def keep_alive(self) -> None:
        """Look after the units from a thread of our own until ``stop_all``; giving up stops everything."""
        with self._lock:
            if self._keeper is None:
                self._keeper = threading.Thread(target=self._keep, name="supervisor", daemon=True)
                self._keeper.start()

    def _keep(self) -> None:
        while not self._stopping.wait(_TICK):
            try:
                gave_up = self.check()
            except Exception:
                logger.exception("the supervisor's check failed; trying again")
                continue
            if gave_up is not None:
                self.stop_all()
                return

    def check(self) -> str | None:
        """One look at every unit: note those that died, restart those whose wait is over.

        Returns the name of a unit that died too often (``gave_up``), after saying so; None otherwise.
        """
        self._checkpoint()
        with self._lock:
            units = list(self._units.values())
        for watched in units:
            self._checkpoint()
            if self._stopping.is_set():
                return None
            if watched.due is None and not watched.unit.alive() and self._died(watched):
                return self.gave_up
            if watched.due is not None and time.monotonic() >= watched.due:
                self._restart(watched)
        return None

    def _died(self, watched: _Watched) -> bool:
        """Count a death; schedule the restart, or give up (True)."""
        now, policy, name = time.monotonic(), self.policy, watched.unit.name
        if now - watched.started >= policy.min_uptime:
            watched.deaths.clear()  # it had started well and ran: not a failed start, a fresh count
        while watched.deaths and now - watched.deaths[0] > policy.window:
            watched.deaths.popleft()
        watched.deaths.append(now)
        count = len(watched.deaths)
        if count > policy.limit:
            self.gave_up = name
            self.say(
                f"{name} exited ({watched.unit.exit_status()}) {count} times within {policy.window:.0f} s; "
                "giving up: stopping everything"
            )
            return True
        pause = backoff.delay(count - 1, base=policy.backoff, cap=policy.backoff_cap)
        watched.due = now + pause
        self.say(
            f"{name} exited ({watched.unit.exit_status()}); restarting in {pause:.1f} s, "
            f"restart {count} of {policy.limit} in {policy.window:.0f} s"
        )
        return False

    def _restart(self, watched: _Watched) -> None:
        unit = watched.unit
        with self._lock:  # stop_all takes it to begin: no launch after the stop began
            if self._stopping.is_set() or self._units.get(unit.name) is not watched:
                return
            watched.due, watched.started = None, time.monotonic()
            try:
                unit.launch()
            except (ServiceError, OSError) as exc:
                self.say(f"{unit.name} could not be restarted: {getattr(exc, 'message', exc)}")
                return  # not alive: the next look counts it as a death
        try:
            unit.wait_ready()
        except ServiceError as exc:
            if not self._stopping.is_set():
                self.say(f"{unit.name} did not come back: {exc.message}")
                unit.stop(self.stop_timeout)  # not alive: the next look counts it as a death
            return
        self.say(f"{unit.name} restarted (pid {unit.pid})")

    # --- stopping -------------------------------------------------------------------------------------

    def stop_all(self) -> None:
        """Stop restarting, then stop the programs all at once (so the stop takes one timeout, not one per
        program: SIGTERM, then SIGKILL), then the services. Never raises."""
        with self._lock:
            self._stopping.set()
            units = [w.unit for w in self._units.values()]
        keeper = self._keeper
        if keeper is not None and keeper is not threading.current_thread():
            keeper.join(self.stop_timeout)
        self._stop_together([u for u in reversed(units) if not u.stops_last])
        self._stop_together([u for u in reversed(units) if u.stops_last])

    def _stop_together(self, units: list[Unit]) -> None:
        # Daemons: a stop that hangs past the deadline must not keep us from exiting.
        threads = [threading.Thread(target=u.stop, args=(self.stop_timeout,), daemon=True) for u in units]
        for t in threads:
            t.start()
        deadline = time.monotonic() + self.stop_timeout + 12
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
