"""What a study or pipeline may be called, and the paths derived from a name.

A name becomes a folder and file names (``logs/<study>/worker-0.log``, ``profiles/<study>-trial3.json``,
SLURM job folders), an MLflow experiment name and a shell word in printed hints. So it is one path
component of portable characters: letters, digits, ``_``, ``.`` and ``-``, not starting with ``.`` or
``-`` (``..`` would climb out of the folder, ``-x`` reads as an option), and short enough that every
derived file name stays far below the 255 bytes a file system allows.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ct_tune._errors import InputError

__all__ = ["MAX_NAME", "NAME_RULE", "check_name", "default_log_dir", "name_problem", "profile_path"]

MAX_NAME = 100
NAME_RULE = f"1 to {MAX_NAME} letters, digits, '_', '.' or '-', starting with a letter, digit or '_'"
_NAME = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_.-]{{0,{MAX_NAME - 1}}}")


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a study or pipeline (None when it can)."""
    if not isinstance(name, str):
        return f"got {type(name).__name__}, not text"
    if not name:
        return "it is empty"
    if len(name) > MAX_NAME:
        return f"it has {len(name)} characters"
    if not _NAME.fullmatch(name):
        return f"{name!r} has other characters" if name[0] not in ".-" else f"{name!r} starts with {name[0]!r}"
    return None


def check_name(name: object, *, what: str, fix: str) -> str:
    """``name`` when it is valid, else one line: ``what``, why, the rule and ``fix``."""
    problem = name_problem(name)
    if problem is not None:
        raise InputError(f"{what} cannot be used: {problem}; use {NAME_RULE} ({fix})")
    return name  # type: ignore[return-value]


def default_log_dir(log_dir: str | os.PathLike[str] | None, study: str) -> Path:
    """``log_dir`` when given, else ``logs/<study>``: a study created before names were checked must not
    write outside ``logs/``."""
    if log_dir:
        return Path(log_dir)
    return Path("logs") / check_name(study, what="the study name as a log folder", fix="pass --log-dir")


def profile_path(study: str, trial: int) -> Path:
    """Where ``study export`` writes a trial's profile by default: ``profiles/<study>-trial<N>.json``."""
    name = check_name(study, what="the study name as a file name", fix="pass --out")
    return Path("profiles") / f"{name}-trial{trial}.json"
