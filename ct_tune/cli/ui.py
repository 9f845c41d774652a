"""``ct-tune ui``: the MLflow UI on a study's tracking store."""

from __future__ import annotations

import argparse
import json
import signal
from typing import Any

from ct_tune.cli._common import CommandResult, add_command


def register(subparsers: Any) -> None:
    parser = add_command(
        subparsers,
        "ui",
        _ui,
        help="start the MLflow UI on the tracking store and print its URL",
        description=(
            "Start the MLflow UI (mlflow server) on a ct-tune tracking store; Ctrl-C, SIGTERM or SIGHUP stops it"
            " and everything it started."
        ),
    )
    parser.add_argument("--study", help="open this study's experiment (and use the store it was created with)")
    parser.add_argument(
        "--tracking-uri", help="MLflow backend store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)"
    )
    parser.add_argument("--storage", help="Optuna storage holding --study")
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=5000, help="port (default 5000)")


def _ui(args: argparse.Namespace) -> CommandResult:
    from ct_tune.stores import resolve_tracking_uri
    from ct_tune.tracking import start_ui
    from ct_tune.workers import interrupt_on

    experiment_id = None
    if args.study:
        from ct_tune.search import load_study

        study = load_study(args.study, storage=args.storage, tracking_uri=args.tracking_uri)
        tracking_uri, experiment_id = study.tracking_uri, study.experiment_id
    else:
        tracking_uri = resolve_tracking_uri(args.tracking_uri)
    # A scheduler's or kill's SIGTERM and a closed terminal's SIGHUP stop the server as Ctrl-C does.
    with interrupt_on(signal.SIGTERM, signal.SIGHUP):
        server = start_ui(tracking_uri, host=args.host, port=args.port, experiment_id=experiment_id)
        try:
            payload = {"url": server.url, "tracking_uri": server.tracking_uri, "pid": server.pid}
            if args.json:
                print(json.dumps(payload), flush=True)
            else:
                print(f"MLflow UI for {server.tracking_uri}: {server.url}  (Ctrl-C stops it)", flush=True)
            server.wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
    return CommandResult({}, emitted=True)
