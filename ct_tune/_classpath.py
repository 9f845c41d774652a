"""Classes named in a spec as ``class_path`` + ``init_args`` (LightningCLI's convention), imported and
built with every failure turned into one line that names the field and the fix."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Mapping
from typing import Any

from ct_tune._errors import InputError

__all__ = ["import_class", "instantiate", "one_line"]


def import_class(class_path: str, *, what: str) -> type:
    """The class a dotted path names; every way it can fail is one line naming the fix."""
    module_name, _, attribute = class_path.rpartition(".")
    if not module_name or not attribute:
        raise InputError(f"{what} {class_path!r} is not a class path; write package.module.ClassName")
    _working_directory_importable()
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise InputError(
            f"{what} {class_path!r}: cannot import {module_name!r} ({error}); install your package "
            "(pip install -e .) or run from the directory that holds it"
        ) from None
    except Exception as error:  # the module itself raised while importing
        raise InputError(f"{what} {class_path!r}: importing {module_name!r} failed: {one_line(error)}") from None
    found = getattr(module, attribute, None)
    if found is None:
        raise InputError(f"{what} {class_path!r}: module {module_name!r} has no {attribute!r}")
    if not inspect.isclass(found):
        raise InputError(f"{what} {class_path!r} is a {type(found).__name__}, not a class")
    return found


def instantiate(cls: type, init_args: Mapping[str, Any], *, what: str) -> Any:
    """``cls(**init_args)``, with arguments the class does not take (or misses) named in one line."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(**init_args)
        except TypeError as error:
            accepted = [name for name, p in signature.parameters.items() if p.kind is not p.VAR_POSITIONAL]
            raise InputError(
                f"{what}.init_args do not fit {cls.__name__}: {error} (it takes: {', '.join(accepted) or 'nothing'})"
            ) from None
    try:
        return cls(**init_args)
    except InputError:
        raise
    except Exception as error:
        raise InputError(f"{what}: {cls.__name__}(**init_args) failed: {one_line(error)}") from None


def one_line(error: BaseException) -> str:
    """An exception as ``Type: message`` on one short line (for errors raised by the user's own code)."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"[:300]


def _working_directory_importable() -> None:
    """A project's own packages import from where ct-tune runs, as with ``python -m`` (the ``ct-tune`` script
    alone would only see installed packages); workers inherit the same import path."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)
