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
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived (raised by the handler that ``stop_signals`` installs). A KeyboardInterrupt, so
    that libraries treat it as they treat Ctrl-C (never as an error to retry or log)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP raise ``Interrupted`` until ``disarm``; after it they are only noted.

    Python ignores (prints) an exception raised where it cannot propagate: in an at-fork callback (logging's
    run in every ``fork``; ``process.spawn`` blocks the stop signals around its fork for that reason), a
    ``__del__``, a weakref callback. A signal arriving there would be lost, so ``check()``, called between
    steps, raises it again.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.armed = True
        self.received: int | None = None

    def disarm(self) -> None:
        """From now on a stop signal is only noted: the stop under way must not be cut short."""
        self.armed = False

    def check(self) -> None:
        """Raise ``Interrupted`` if a stop signal arrived (and its exception was swallowed)."""
        if self.armed and self.received is not None:
            raise Interrupted(self.received)

    def _handle(self, signum: int, _: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
        if self.armed:
            raise Interrupted(signum)


@contextmanager
def stop_signals() -> Iterator[StopSignals]:
    """Install the handlers (main thread only) for the block; the previous ones come back after it."""
    signals = StopSignals()
    previous = {s: signal.signal(s, signals._handle) for s in StopSignals.SIGNALS}
    try:
        yield signals
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
