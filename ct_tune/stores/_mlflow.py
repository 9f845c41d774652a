"""Opening the MLflow backend store: its schema created on first use, a store that cannot be opened a
one-line ``InputError`` instead of MLflow's own retries and tracebacks."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ct_tune._errors import InputError
from ct_tune._quiet import quiet_loggers
from ct_tune.stores._lock import schema_lock
from ct_tune.stores._optuna import database_reason
from ct_tune.stores._reach import check_reachable
from ct_tune.stores._urls import prepare_sqlite, redact

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["open_mlflow_client"]


def open_mlflow_client(tracking_uri: str) -> MlflowClient:
    """An ``MlflowClient`` on ``tracking_uri`` that has answered once (which creates a SQL store's schema)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # nothing phones home unless the user opts in
    prepare_sqlite(tracking_uri)
    check_reachable(tracking_uri, what="MLflow tracking store")  # before importing MLflow: 4 s sooner on failure
    from mlflow import MlflowClient

    try:
        # Schema creation logs at INFO (not the user's news), and is done by one process at a time.
        with quiet_loggers("mlflow.store.db.utils", "alembic"), schema_lock(tracking_uri):
            client = MlflowClient(tracking_uri=tracking_uri)
            client.search_experiments(max_results=1)
    except Exception as error:
        raise InputError(
            f"cannot open the MLflow tracking store {redact(tracking_uri)}: {database_reason(error)}"
        ) from None
    return client
