"""Writing an output file atomically, with one line naming the path when it cannot be written.

The content goes to a temporary file beside the target, which then replaces it: a crash never leaves half
a file, and a failure (a directory given for a file, no permission, a full disk) leaves no temporary behind.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from ct_tune._errors import InputError

__all__ = ["write_atomically"]


def write_atomically(path: str | os.PathLike[str], write: Callable[[Path], None], *, what: str, example: str) -> Path:
    """Call ``write(temporary)`` and move the result to ``path``; ``what`` names the file in errors and
    ``example`` is a file name to suggest when ``path`` is a directory."""
    target = Path(path)
    if target.is_dir():
        raise InputError(f"{what} path {target} is a directory; give a file path, e.g. {target / example}")
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")  # per process: writers never share one
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write(temporary)
        os.replace(temporary, target)
    except OSError as error:
        where = "" if error.filename in (None, str(temporary), str(target)) else f": {error.filename}"
        reason = f"{error.strerror or error}{where}"
        raise InputError(f"cannot write {what} {target} ({reason}); choose a path you can write to") from None
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
    return target
