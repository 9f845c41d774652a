"""Where a study lives: the Optuna storage and the MLflow backend store, as URLs.

- Two databases: Optuna and MLflow both keep their schema version in a table named ``alembic_version``,
  so they cannot share one (two SQLite files, or two databases on one PostgreSQL server).
- ``resolve_storage`` / ``resolve_tracking_uri`` decide where each URL comes from (argument, environment,
  spec, the study's record, default); ``redact`` is the form of a URL that is printed or logged,
  ``without_password`` the one that is stored; ``check_reachable`` tries a store once, in seconds;
  ``check_writable`` checks that it takes a write.
- ``open_optuna_storage`` opens the Optuna side with the settings parallel workers need; ``init_stores`` /
  ``upgrade_stores`` create or migrate both schemas once, before workers start.
"""

from ct_tune.stores._lock import study_lock
from ct_tune.stores._mlflow import open_mlflow_client
from ct_tune.stores._optuna import (
    count_states,
    database_cause,
    database_fault,
    database_fix,
    database_reason,
    is_database_error,
    open_optuna_storage,
    running_ages,
)
from ct_tune.stores._reach import check_reachable, check_writable
from ct_tune.stores._schema import init_stores, upgrade_stores
from ct_tune.stores._urls import (
    DEFAULT_STORAGE,
    DEFAULT_TRACKING_URI,
    STORAGE_ENV,
    TRACKING_ENV,
    check_two_databases,
    engine_kwargs,
    is_tracking_server,
    normalize_url,
    prepare_sqlite,
    redact,
    resolve_storage,
    resolve_tracking_uri,
    sqlite_path,
    without_password,
)

__all__ = [
    "DEFAULT_STORAGE",
    "DEFAULT_TRACKING_URI",
    "STORAGE_ENV",
    "TRACKING_ENV",
    "check_reachable",
    "check_two_databases",
    "check_writable",
    "count_states",
    "database_cause",
    "database_fault",
    "database_fix",
    "database_reason",
    "engine_kwargs",
    "init_stores",
    "is_database_error",
    "is_tracking_server",
    "normalize_url",
    "open_mlflow_client",
    "open_optuna_storage",
    "prepare_sqlite",
    "redact",
    "resolve_storage",
    "resolve_tracking_uri",
    "running_ages",
    "sqlite_path",
    "study_lock",
    "upgrade_stores",
    "without_password",
]
