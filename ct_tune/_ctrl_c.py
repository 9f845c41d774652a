"""Ctrl-C noted from the ``ct-tune`` command's first import on.

A SIGINT that lands inside a third-party import (torch importing numpy, Lightning importing scipy) can be
swallowed there and leave the module half-initialised; the command then fails later with an unrelated
error (a RecursionError from numpy's ``__getattr__`` was seen in CI). Noting every SIGINT lets the CLI
report that failure as the interrupt it was: one line, exit 130, no traceback.

A SIGINT can also land while Python runs a callback whose exceptions it cannot raise (a weakref callback
of the import machinery, a ``__del__``): Python prints "Exception ignored in ..." with a traceback and
drops the interrupt (seen in CI, 2026-12-05). The unraisable hook installed here prints nothing for such a
KeyboardInterrupt and delivers it again in the main thread, where it stops the command as usual.
"""

from __future__ import annotations

import _thread
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

__all__ = ["NOTED", "note_ctrl_c"]

NOTED: list[bool] = []  # one entry per SIGINT received while noting


def _handler(signum: int, frame: FrameType | None) -> None:
    NOTED.append(True)
    raise KeyboardInterrupt


def _interrupt_soon() -> None:
    time.sleep(0.05)
    _thread.interrupt_main()


def _unraisable(previous: Any) -> Any:
    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and signal.getsignal(signal.SIGINT) is _handler:
            _thread.start_new_thread(_interrupt_soon, ())  # lands once this hook and its callback returned
            return
        previous(unraisable)

    hook.ct_tune = True  # type: ignore[attr-defined]
    return hook


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
    if not getattr(sys.unraisablehook, "ct_tune", False):
        sys.unraisablehook = _unraisable(sys.unraisablehook)
    return True
