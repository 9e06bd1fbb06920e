"""Stop signals that stop us wherever we are: SIGINT, SIGTERM and SIGHUP raise ``Interrupted``.

    with stop_signals() as signals:
        try:
            ...                      # start-up, waits, broker pings: a stop signal raises Interrupted here
        finally:
            signals.disarm()         # the stop under way is not cut short by a second Ctrl-C
            ...

The handlers are installed explicitly, so a stop signal works even when we were started with SIGINT ignored
(a shell ignores it for a command started with ``&``, and Python then keeps it ignored). ``Interrupted`` is a
``KeyboardInterrupt``, so libraries treat it as they treat Ctrl-C, never as an error to retry or log.

Python ignores (prints) an exception raised where it cannot propagate: in an at-fork callback, a
``__del__``, a weakref callback. Raised in logging's at-fork callback, it would also leave logging's lock
held, and every later log line from another thread would hang. So ``process.spawn`` forks inside
``deferred()``, where a stop signal is only noted, and ``checkpoint()``, called between steps (each poll of
``process.wait_until``, each launch and look of the supervisor), raises a signal noted but not raised.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_installed: list[StopSignals] = []  # innermost last; handlers run on the main thread only
_deferring = 0  # > 0: the main thread is where an exception would be swallowed


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived (raised by the handler that ``stop_signals`` installs)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Raises ``Interrupted`` on a stop signal until ``disarm``; from then on the signals are only noted."""

    def __init__(self) -> None:
        self.armed = True
        self.received: int | None = None

    def disarm(self) -> None:
        """From now on a stop signal is only noted: the stop under way must not be cut short."""
        self.armed = False

    def check(self) -> None:
        """Raise ``Interrupted`` if a stop signal arrived (its exception deferred or swallowed)."""
        if self.armed and self.received is not None:
            raise Interrupted(self.received)

    def _handle(self, signum: int, _: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
        if self.armed and not _deferring:
            raise Interrupted(signum)


@contextmanager
def stop_signals() -> Iterator[StopSignals]:
    """Install the handlers (main thread only) for the block; the previous ones come back after it."""
    signals = StopSignals()
    previous = {s: signal.signal(s, signals._handle) for s in SIGNALS}
    _installed.append(signals)
    try:
        yield signals
    finally:
        _installed.remove(signals)
        for s, h in previous.items():
            signal.signal(s, h)


def installed() -> StopSignals | None:
    return _installed[-1] if _installed else None


def checkpoint() -> None:
    """On the main thread: raise ``Interrupted`` if a stop signal was noted but not raised. Elsewhere a no-op."""
    if _installed and threading.current_thread() is threading.main_thread():
        _installed[-1].check()


@contextmanager
def deferred() -> Iterator[None]:
    """On the main thread: a stop signal within the block is only noted (``checkpoint`` raises it later)."""
    global _deferring  # noqa: PLW0603 - the handler's view of the main thread, as signal handlers have one
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
