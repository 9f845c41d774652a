"""Exceptions ct-tune raises for problems a user can act on; the CLI prints them as one line.

Exit codes: ``InputError`` 2 (bad input, or a store that cannot be reached at start), ``StorageLost`` 3
(a database went away during a run: run again to resume), ``StoreFailed`` 2 (a store failed in a way that
waiting does not mend: damaged, read-only, full; the message says what to do), ``StudyDeleted`` 4 (the study
was deleted while it ran: ``study delete --force``), ``WorkerFailed`` 1. ``InputError`` is a
``ValueError`` so library callers can catch the usual type.
"""

from __future__ import annotations


class CTTuneError(Exception):
    """A problem with a one-line explanation; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class InputError(CTTuneError, ValueError):
    """Bad input from the user (argument, file, spec, data): the message says what and how to fix."""

    exit_code = 2


class StorageLost(CTTuneError):
    """The Optuna storage (or the MLflow store) stopped answering during a run."""

    exit_code = 3


class StudyDeleted(CTTuneError):
    """The study was deleted (``study delete --force``) while a launch ran it: its workers stopped."""

    exit_code = 4


class StoreFailed(CTTuneError):
    """A store failed during a run in a way that waiting does not mend (a damaged file, a store that
    refuses writes, a full disk): the message names the store and what to do."""

    exit_code = 2


class WorkerFailed(CTTuneError):
    """A worker process ended with an error; its log file says why."""

    exit_code = 1
