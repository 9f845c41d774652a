"""``ct-tune db``: create or upgrade the Optuna storage and the MLflow store before workers start.

Several processes creating a schema at the same time race (seen on SQLite and PostgreSQL): on a
cluster, run ``ct-tune db init`` once, then start the workers.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any

from ct_tune._errors import InputError
from ct_tune.cli._common import CommandResult, add_command, add_group


def register(subparsers: Any) -> None:
    commands = add_group(
        subparsers,
        "db",
        help="create or upgrade the Optuna and MLflow databases",
        description=__doc__,
    )
    for name, handler, text in (
        ("init", _init, "create both schemas if missing (idempotent)"),
        ("upgrade", _upgrade, "upgrade both schemas to the installed Optuna and MLflow versions"),
    ):
        command = add_command(commands, name, handler, help=text)
        command.add_argument(
            "--storage", help="Optuna storage (default: $CT_TUNE_STORAGE, else sqlite:///studies/optuna.db)"
        )
        command.add_argument(
            "--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)"
        )


def _urls(args: argparse.Namespace) -> tuple[str, str]:
    from ct_tune.storage import resolve_storage, resolve_tracking_uri

    storage, tracking = resolve_storage(args.storage), resolve_tracking_uri(args.tracking_uri)
    if storage == tracking:
        raise InputError(
            "the Optuna storage and the MLflow store must be two databases (both keep an alembic_version table)"
        )
    return storage, tracking


def _init(args: argparse.Namespace) -> CommandResult:
    from ct_tune.storage import open_optuna_storage, redact
    from ct_tune.tracking import Tracker

    storage_url, tracking_uri = _urls(args)
    storage = open_optuna_storage(storage_url)  # creates the tables when missing
    tracker = Tracker(tracking_uri) if not tracking_uri.startswith(("http", "databricks")) else None
    payload = {
        "storage": redact(storage_url),
        "optuna_schema": storage.get_current_version(),
        "tracking_uri": redact(tracking_uri),
        "mlflow_ready": tracker is not None,
    }

    def render() -> None:
        print(f"Optuna storage {payload['storage']}: ready (schema {payload['optuna_schema']})")
        where = "ready" if tracker is not None else "a tracking server (its own database)"
        print(f"MLflow store {payload['tracking_uri']}: {where}")

    return CommandResult(payload, render)


def _upgrade(args: argparse.Namespace) -> CommandResult:
    from ct_tune.storage import database_reason, engine_kwargs, prepare_sqlite, redact

    import optuna

    storage_url, tracking_uri = _urls(args)
    prepare_sqlite(storage_url)
    try:
        storage = optuna.storages.RDBStorage(
            storage_url, engine_kwargs=engine_kwargs(storage_url), skip_compatibility_check=True
        )
        before = storage.get_current_version()
        storage.upgrade()
        after = storage.get_current_version()
    except Exception as error:
        raise InputError(f"cannot upgrade the Optuna storage {redact(storage_url)}: {database_reason(error)}") from None
    mlflow = None
    if not tracking_uri.startswith(("http", "databricks")):
        prepare_sqlite(tracking_uri)
        proc = subprocess.run(
            [sys.executable, "-m", "mlflow", "db", "upgrade", tracking_uri], capture_output=True, text=True
        )
        if proc.returncode != 0:
            reason = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise InputError(f"cannot upgrade the MLflow store {redact(tracking_uri)}: {reason[:300]}")
        mlflow = "upgraded"
    payload = {
        "storage": redact(storage_url),
        "optuna_schema": {"before": before, "after": after},
        "tracking_uri": redact(tracking_uri),
        "mlflow": mlflow or "a tracking server (upgrade it there)",
    }

    def render() -> None:
        print(f"Optuna storage {payload['storage']}: schema {before} -> {after}")
        print(f"MLflow store {payload['tracking_uri']}: {payload['mlflow']}")

    return CommandResult(payload, render)
