"""What a worker tells its launcher: one JSON line per event on stdout (``ready``, ``trial``, ``summary``);
and how it reads its settings: one JSON document on stdin, so that nothing (storage URLs with their
passwords) travels on a command line that other users of the machine can read."""

from __future__ import annotations

import json
import sys
from typing import Any

__all__ = ["EVENT_PREFIX", "emit_event", "parse_event", "read_settings"]

EVENT_PREFIX = "ct-tune-event "


def emit_event(kind: str, **payload: Any) -> None:
    """A worker's message to its launcher: one line on stdout."""
    sys.stdout.write(EVENT_PREFIX + json.dumps({"event": kind, **payload}, default=str) + "\n")
    sys.stdout.flush()


def parse_event(line: str) -> dict[str, Any] | None:
    """The event a stdout line carries, None for any other line (a library printing to stdout)."""
    if not line.startswith(EVENT_PREFIX):
        return None
    return json.loads(line[len(EVENT_PREFIX) :])


def read_settings() -> dict[str, Any]:
    """The worker's settings, as the launcher wrote them on its stdin."""
    text = sys.stdin.read()
    try:
        settings = json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        settings = None
    if not isinstance(settings, dict):
        raise SystemExit("ct-tune worker: expected one JSON object with its settings on stdin")
    return settings
