"""Creating and upgrading both schemas once, before any worker starts.

Every store is opened under a schema lock (``ct_tune.stores._lock``), so processes that first use an
empty database at the same time no longer race; ``init_stores`` (``ct-tune db init``) creates both schemas
up front, which keeps the first ``study create`` or worker from paying for it.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from ct_tune._errors import InputError
from ct_tune.stores._halfmade import repair_half_created
from ct_tune.stores._lock import schema_lock
from ct_tune.stores._mlflow import open_mlflow_client
from ct_tune.stores._optuna import database_reason, open_optuna_storage
from ct_tune.stores._urls import (
    check_two_databases,
    engine_kwargs,
    is_tracking_server,
    prepare_sqlite,
    redact,
    resolve_storage,
    resolve_tracking_uri,
)

__all__ = ["init_stores", "upgrade_stores"]

# `mlflow db upgrade URL`, with the URL read from stdin instead of the command line.
_MLFLOW_UPGRADE = "import sys; from mlflow.db import commands; commands(['upgrade', sys.stdin.read()], 'mlflow db')"


def _urls(storage: str | None, tracking_uri: str | None) -> tuple[str, str]:
    storage_url, tracking = resolve_storage(storage), resolve_tracking_uri(tracking_uri)
    check_two_databases(storage_url, tracking)
    return storage_url, tracking


def init_stores(*, storage: str | None = None, tracking_uri: str | None = None) -> dict[str, Any]:
    """Create both schemas where missing (idempotent); what was found, with URLs redacted."""
    storage_url, tracking = _urls(storage, tracking_uri)
    optuna_storage = open_optuna_storage(storage_url)  # creates the tables when missing
    server = is_tracking_server(tracking)
    if not server:
        open_mlflow_client(tracking)
    return {
        "storage": redact(storage_url),
        "optuna_schema": optuna_storage.get_current_version(),
        "tracking_uri": redact(tracking),
        "mlflow_ready": not server,
    }


def upgrade_stores(*, storage: str | None = None, tracking_uri: str | None = None) -> dict[str, Any]:
    """Migrate both schemas to the installed Optuna and MLflow versions (``mlflow db upgrade`` for MLflow)."""
    import optuna

    storage_url, tracking = _urls(storage, tracking_uri)
    prepare_sqlite(storage_url)
    try:
        optuna_storage = optuna.storages.RDBStorage(
            storage_url, engine_kwargs=engine_kwargs(storage_url), skip_compatibility_check=True
        )
        before = optuna_storage.get_current_version()
        optuna_storage.upgrade()
        after = optuna_storage.get_current_version()
    except Exception as error:
        raise InputError(f"cannot upgrade the Optuna storage {redact(storage_url)}: {database_reason(error)}") from None
    mlflow = "a tracking server (upgrade it there)"
    if not is_tracking_server(tracking):
        prepare_sqlite(tracking)
        with schema_lock(tracking):
            repaired = repair_half_created(tracking)  # else MLflow's migrations stop on what a first try left
        proc = subprocess.run(  # the URL on stdin: `ps` shows a command line, password and all, to everyone
            [sys.executable, "-c", _MLFLOW_UPGRADE], input=tracking, capture_output=True, text=True
        )
        if proc.returncode != 0:
            reason = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise InputError(f"cannot upgrade the MLflow store {redact(tracking)}: {reason[:300]}")
        mlflow = f"{repaired}; upgraded" if repaired else "upgraded"
    return {
        "storage": redact(storage_url),
        "optuna_schema": {"before": before, "after": after},
        "tracking_uri": redact(tracking),
        "mlflow": mlflow,
    }
