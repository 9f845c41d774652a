"""Ctrl-C noted from the ``ct-tune`` command's first import on.

A SIGINT that lands inside a third-party import (torch importing numpy, Lightning importing scipy) can be
swallowed there and leave the module half-initialised; the command then fails later with an unrelated
error (a RecursionError from numpy's ``__getattr__`` was seen in CI). Noting every SIGINT lets the CLI
report that failure as the interrupt it was: one line, exit 130, no traceback.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = ["NOTED", "note_ctrl_c"]

NOTED: list[bool] = []  # one entry per SIGINT received while noting


def _handler(signum: int, frame: FrameType | None) -> None:
    NOTED.append(True)
    raise KeyboardInterrupt


def note_ctrl_c() -> bool:
    """Route SIGINT through the noting handler (it still raises KeyboardInterrupt); False where that is not
    possible or not wanted: off the main thread, or SIGINT ignored (a background job of a script keeps it
    ignored). Idempotent."""
    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(signal.SIGINT)
    if current is _handler:
        return True
    if current is not signal.default_int_handler:
        return False
    signal.signal(signal.SIGINT, _handler)
    return True
