"""``ct-tune db``: create or upgrade the Optuna storage and the MLflow store before workers start.

Any command creates a missing schema itself (one process at a time, under a lock); ``db init`` does it
up front, and ``db upgrade`` migrates both to the installed Optuna and MLflow.
"""

from __future__ import annotations

import argparse
from typing import Any

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


def _init(args: argparse.Namespace) -> CommandResult:
    from ct_tune.stores import init_stores

    payload = init_stores(storage=args.storage, tracking_uri=args.tracking_uri)

    def render() -> None:
        print(f"Optuna storage {payload['storage']}: ready (schema {payload['optuna_schema']})")
        where = "ready" if payload["mlflow_ready"] else "a tracking server (its own database)"
        print(f"MLflow store {payload['tracking_uri']}: {where}")

    return CommandResult(payload, render)


def _upgrade(args: argparse.Namespace) -> CommandResult:
    from ct_tune.stores import upgrade_stores

    payload = upgrade_stores(storage=args.storage, tracking_uri=args.tracking_uri)

    def render() -> None:
        schema = payload["optuna_schema"]
        print(f"Optuna storage {payload['storage']}: schema {schema['before']} -> {schema['after']}")
        print(f"MLflow store {payload['tracking_uri']}: {payload['mlflow']}")

    return CommandResult(payload, render)
