"""Opening the MLflow backend store: its schema created on first use, a store that cannot be opened a
one-line ``InputError`` instead of MLflow's own retries and tracebacks.

MLflow's SQL store keeps one engine per database URL and process, created with the first store on it; its
pool is set only through ``$MLFLOW_SQLALCHEMYSTORE_POOL_SIZE`` / ``..._MAX_OVERFLOW`` (read then; a
``MAX_OVERFLOW`` of 0 is ignored, as MLflow passes only values that are true). On a database server
ct-tune asks for one connection kept and two of overflow: MLflow's ``log_batch`` opens a second session
inside its first, and a background thread (figures) may make a call meanwhile; with three, one of the two
threads can always finish, so neither waits on the other for long. The variables are set only while the
engine is created, and only where the user has not set them: a ``mlflow server`` started later (the UI)
keeps MLflow's own pool, which its request threads need.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ct_tune._errors import InputError
from ct_tune._quiet import quiet_loggers
from ct_tune.stores._halfmade import repair_half_created
from ct_tune.stores._lock import schema_lock
from ct_tune.stores._optuna import database_reason
from ct_tune.stores._reach import check_reachable
from ct_tune.stores._urls import prepare_sqlite, redact

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["open_mlflow_client"]

DATABASE_POOL = {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "1", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "2"}


def open_mlflow_client(tracking_uri: str) -> MlflowClient:
    """An ``MlflowClient`` on ``tracking_uri`` that has answered once (which creates a SQL store's schema)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # nothing phones home unless the user opts in
    # On a tracking server, MLflow prints two links to stdout at every run's end, after one more request.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    prepare_sqlite(tracking_uri)
    check_reachable(tracking_uri, what="MLflow tracking store")  # before importing MLflow: 4 s sooner on failure
    from mlflow import MlflowClient

    try:
        # Schema creation logs at INFO (not the user's news), and is done by one process at a time.
        with quiet_loggers("mlflow.store.db.utils", "alembic"), schema_lock(tracking_uri), lean_pool(tracking_uri):
            repair_half_created(tracking_uri)  # a first creation that stopped midway fails every later open
            client = MlflowClient(tracking_uri=tracking_uri)
            client.search_experiments(max_results=1)  # creates the store, and so its engine
    except InputError:
        raise
    except Exception as error:
        raise InputError(
            f"cannot open the MLflow tracking store {redact(tracking_uri)}: {database_reason(error)}"
        ) from None
    return client


@contextlib.contextmanager
def lean_pool(tracking_uri: str) -> Iterator[None]:
    """MLflow's pool settings for a database server while the block runs (see the module's notes); the
    user's own settings, and SQLite stores, are left alone."""
    server = tracking_uri.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "mysql", "mssql")
    added = [key for key in DATABASE_POOL if server and key not in os.environ]
    for key in added:
        os.environ[key] = DATABASE_POOL[key]
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)
