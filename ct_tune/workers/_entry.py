"""A worker's entry point named as ``"module:function"``: what a SLURM job or Ray actor imports and calls
in its own process (the launcher never imports the worker side, and pickles only the name)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["resolve_entry"]


def resolve_entry(name: str) -> Callable[..., Any]:
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)
