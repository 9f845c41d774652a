"""Opening the Optuna storage, and telling a lost database apart from other failures."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ct_tune._errors import InputError
from ct_tune.stores._urls import engine_kwargs, prepare_sqlite, redact

if TYPE_CHECKING:
    import optuna

__all__ = ["count_states", "database_cause", "database_reason", "is_database_error", "open_optuna_storage"]


def open_optuna_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    stale_trial_callback: Callable[[optuna.study.Study, optuna.trial.FrozenTrial], None] | None = None,
) -> optuna.storages.RDBStorage:
    """An RDBStorage with the settings above; an unreachable database is a one-line InputError."""
    import warnings

    import optuna

    prepare_sqlite(url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs(url),
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=stale_trial_callback,
            )
    except Exception as error:  # sqlalchemy/psycopg raise many types for "cannot connect"
        raise InputError(f"cannot open the Optuna storage {redact(url)}: {database_reason(error)}") from None


NO_PASSWORD_HINT = (
    "the server wants a password and none was given: put it in ~/.pgpass or PGPASSWORD, or give the URL with "
    "it by flag or environment variable (stored URLs never hold one)"
)


def database_reason(error: BaseException) -> str:
    """A short, password-free reason for a database failure; a missing password says where to put one."""
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    reason = text[0] if text else type(error).__name__
    if "no password supplied" in reason:  # libpq's words when neither the URL, PGPASSWORD nor ~/.pgpass has one
        return NO_PASSWORD_HINT
    return reason[:300]


def is_database_error(error: BaseException) -> bool:
    """True when a database failure is the cause, anywhere in the exception chain.

    The chain matters: when Optuna cannot ``tell`` a trial because the database went away, its own
    error handling fails next (optuna 5.0 raises ``UnboundLocalError`` from ``_run_trial``), so the
    exception that surfaces is not the database error itself.
    """
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import DBAPIError, OperationalError

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, (OperationalError, DBAPIError, StorageInternalError)):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def database_cause(error: BaseException) -> BaseException:
    """The database error in ``error``'s chain (``error`` itself when there is none)."""
    from sqlalchemy.exc import DBAPIError

    current: BaseException | None = error
    while current is not None:
        if isinstance(current, DBAPIError):
            return current
        current = current.__cause__ or current.__context__
    return error


def count_states(storage: optuna.storages.BaseStorage, study_id: int) -> dict[str, int]:
    """Trials per state name, in one query on an RDB storage.

    ``get_n_trials`` loads every trial of a state (with its params) to count it: a cost that grows with
    the study and is paid several times per trial by the budget checks.
    """
    from optuna.storages import RDBStorage
    from optuna.trial import TrialState

    counts = dict.fromkeys((state.name for state in TrialState), 0)
    if isinstance(storage, RDBStorage):
        from sqlalchemy import text

        query = text("SELECT state, COUNT(*) FROM trials WHERE study_id = :study_id GROUP BY state")
        with storage.engine.connect() as connection:
            for state, count in connection.execute(query, {"study_id": study_id}):
                name = state.name if isinstance(state, TrialState) else str(state)
                counts[name] = int(count)
        return counts
    return {state.name: storage.get_n_trials(study_id, state) for state in TrialState}
