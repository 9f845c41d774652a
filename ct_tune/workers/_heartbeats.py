"""Heartbeats for trials that ``study.optimize`` does not run.

Optuna's own heartbeat thread serves the one trial of ``study.optimize``; trials asked together (batched
trials) need their own: one thread records a heartbeat for each of them every interval, so a worker that
dies is noticed by the others whichever way its trials were started. A failing write is tried again at the
next beat (a database that blinks must not cost a trial) and logged once at debug level: a database that
stays away is the main loop's to report, in one line.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ct_tune.stores import database_reason

__all__ = ["Heartbeats", "heartbeat_interval"]

logger = logging.getLogger(__name__)


def heartbeat_interval(storage: Any) -> int | None:
    """The storage's heartbeat interval, None when it has no heartbeats (Optuna's own test)."""
    interval = getattr(storage, "get_heartbeat_interval", None)
    return interval() if interval is not None else None


class Heartbeats:
    """``with Heartbeats(storage, trial_ids):`` keeps those trials alive while the block runs."""

    def __init__(self, storage: Any, trial_ids: list[int]) -> None:
        self.storage = storage
        self.trial_ids = trial_ids
        self.interval = heartbeat_interval(storage)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeats:
        if self.interval is not None:
            self._thread = threading.Thread(target=self._beat, name="ct-tune-heartbeats", daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        assert self.interval is not None
        failing = False
        while True:
            try:
                for trial_id in self.trial_ids:
                    self.storage.record_heartbeat(trial_id)
                failing = False
            except Exception as error:
                if not failing:
                    logger.debug("could not record heartbeats (trying again): %s", database_reason(error))
                failing = True
            if self._stop.wait(timeout=self.interval):
                return

    def __exit__(self, *exc_info: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
