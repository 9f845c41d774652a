"""Opening the Optuna storage, and telling a lost database apart from other failures."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ct_tune._errors import InputError
from ct_tune.stores._lock import schema_lock
from ct_tune.stores._urls import engine_kwargs, prepare_sqlite, redact

if TYPE_CHECKING:
    import optuna
    import sqlalchemy

__all__ = [
    "count_states",
    "database_cause",
    "database_fault",
    "database_fix",
    "database_reason",
    "is_database_error",
    "open_optuna_storage",
    "running_ages",
]


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
            with schema_lock(url):
                storage = optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs(url),
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=stale_trial_callback,
                )
    except Exception as error:  # sqlalchemy/psycopg raise many types for "cannot connect"
        raise InputError(f"cannot open the Optuna storage {redact(url)}: {database_reason(error)}") from None
    if url.startswith("sqlite"):
        serialize_sqlite_transactions(storage.engine)
    return storage


def serialize_sqlite_transactions(engine: sqlalchemy.engine.Engine) -> None:
    """Start every transaction on this SQLite engine with ``BEGIN IMMEDIATE``.

    Optuna reads a row, checks it and writes it back in one session (a WAITING trial is popped that way,
    a finished trial is refused that way); on PostgreSQL ``SELECT ... FOR UPDATE`` makes that atomic.
    Python's sqlite3 driver runs the read outside any transaction and opens one only at the write, so two
    workers could both pop the same enqueued trial (measured: 39 of 160 pops duplicated by 4 processes).
    ``BEGIN IMMEDIATE`` takes the write lock first: the second worker waits, then reads the new state.
    """
    from sqlalchemy import event

    def autocommit_driver(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver opens no transaction of its own

    def begin_immediate(connection: sqlalchemy.engine.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(engine, "connect", autocommit_driver)
    event.listen(engine, "begin", begin_immediate)
    engine.dispose()  # connections opened while Optuna created its tables predate the listeners


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


# Faults that waiting does not mend, by the words SQLite and PostgreSQL use (and PostgreSQL's SQLSTATE):
# (what happened, what to do). Anything else (a connection refused, reset or closed) is a server that went
# away, and running again once it is back resumes the study.
DAMAGED = (
    "is damaged",
    "restore it from a backup (for SQLite, `sqlite3 FILE .recover` saves what it can); running again will not help",
)
READ_ONLY = (
    "refuses writes",
    "make the file and its folder writable for the user that runs ct-tune (PostgreSQL: grant the role INSERT, "
    "UPDATE and DELETE on its tables), then run again",
)
DISK_FULL = ("has no room left", "free space on the disk that holds it, then run again")
PERMANENT_FAULTS: tuple[tuple[tuple[str, ...], tuple[str, str]], ...] = (
    (("database disk image is malformed", "file is not a database", "XX001", "XX002", "invalid page in"), DAMAGED),
    (("readonly database", "read-only", "permission denied", "42501", "25006"), READ_ONLY),
    (("database or disk is full", "no space left on device", "could not extend file", "53100", "quota"), DISK_FULL),
)


def database_fault(error: BaseException) -> tuple[str, str] | None:
    """(what happened, what to do) when a database error in ``error``'s chain is one that waiting does not
    mend (a damaged file, a store that refuses writes, a full disk); None for anything else, such as a
    server that went away."""
    cause = database_cause(error)
    orig = getattr(cause, "orig", None) or cause
    words = " ".join([str(orig), str(getattr(orig, "sqlstate", "") or getattr(orig, "pgcode", "") or "")]).lower()
    for markers, fault in PERMANENT_FAULTS:
        if any(marker.lower() in words for marker in markers):
            return fault
    return None


def database_fix(error: BaseException) -> str | None:
    """What to do about a fault that waiting does not mend (``database_fault``), else None."""
    fault = database_fault(error)
    return None if fault is None else fault[1]


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


def running_ages(storage: optuna.storages.BaseStorage, study_id: int) -> dict[int, float]:
    """Seconds since each RUNNING trial of a study last showed life (its latest heartbeat, else its start), by
    trial number, in one query: a launch that runs the study now has some of a few seconds."""
    import datetime as dt

    from optuna.storages import RDBStorage
    from sqlalchemy import func, text

    if not isinstance(storage, RDBStorage):
        return {}
    query = text(
        "SELECT t.number, t.datetime_start, h.heartbeat FROM trials t LEFT JOIN trial_heartbeats h "
        "ON h.trial_id = t.trial_id WHERE t.study_id = :study_id AND t.state = 'RUNNING'"
    )
    with storage.engine.connect() as connection:
        now = _naive(connection.execute(func.now().select()).scalar())  # the clock heartbeats are written with
        rows = connection.execute(query, {"study_id": study_id}).all()
    ages = {}
    for number, started, heartbeat in rows:
        if heartbeat is not None:
            ages[int(number)] = (now - _naive(heartbeat)).total_seconds()
        elif started is not None:  # Optuna writes the start with this machine's local clock
            ages[int(number)] = (dt.datetime.now() - _naive(started)).total_seconds()
    return ages


def _naive(value: Any) -> Any:
    import datetime as dt

    if isinstance(value, str):  # SQLite returns its timestamps as text
        value = dt.datetime.fromisoformat(value)
    return value.replace(tzinfo=None)
