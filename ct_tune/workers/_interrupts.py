"""Ctrl-C (and SIGTERM) that never splits a trial's bookkeeping.

A trial is interruptible while it evaluates: Ctrl-C there fails it (Optuna marks it FAIL, ct-tune
closes its MLflow run FAILED). Between the evaluation's end and Optuna's ``tell`` the result is being
written to both stores; an interrupt there waits until both hold the same state, then stops the run.
A second Ctrl-C while one is waiting interrupts at once. SIGTERM (a cluster scheduler's preemption,
``kill``) is handled like Ctrl-C.

``interrupt_on`` does the same for code with no bookkeeping to protect (the launcher, ``ct-tune ui``):
the signals it names stop the block as Ctrl-C would, so its cleanup runs.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


@contextmanager
def interrupt_on(*signals: signal.Signals) -> Iterator[set[int]]:
    """While the block runs, ``signals`` raise KeyboardInterrupt; the set yielded records which arrived.

    Without it SIGTERM and SIGHUP end Python at once, skipping ``finally``: what the process started (a
    server, workers) is left running. Main thread only; elsewhere nothing changes.
    """
    received: set[int] = set()
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        received.add(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class InterruptGuard:
    def __init__(self) -> None:
        self._deferring = 0
        self._pending = False

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self._deferring and not self._pending:
            self._pending = True
            return
        self._pending = False
        raise KeyboardInterrupt

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Route SIGINT and SIGTERM through the guard (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Bookkeeping: an interrupt is held until the block ends, then raised."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
        if self._deferring == 0 and self._pending:
            self._pending = False
            raise KeyboardInterrupt

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """Evaluation: an interrupt (held or new) is raised at once."""
        if self._pending:
            self._pending = False
            raise KeyboardInterrupt
        saved, self._deferring = self._deferring, 0
        try:
            yield
        finally:
            self._deferring = saved
