"""``ct-tune ui``: the MLflow UI on a study's tracking store."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

from ct_tune._errors import InputError
from ct_tune.cli._common import CommandResult, add_command

STARTUP_SECONDS = 120


def register(subparsers: Any) -> None:
    parser = add_command(
        subparsers,
        "ui",
        _ui,
        help="start the MLflow UI on the tracking store and print its URL",
        description="Start the MLflow UI (mlflow server) on a ct-tune tracking store; Ctrl-C stops it.",
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
    from ct_tune.storage import redact, resolve_storage, resolve_tracking_uri
    from ct_tune.tracking import Tracker, default_artifact_location

    experiment_id = None
    stored_uri = None
    if args.study:
        from ct_tune.study import load_study

        info = load_study(name=args.study, storage_url=resolve_storage(args.storage))
        stored_uri, experiment_id = info.mlflow.get("tracking_uri"), info.mlflow.get("experiment_id")
    tracking_uri = resolve_tracking_uri(args.tracking_uri, stored_uri)
    Tracker(tracking_uri)  # creates the schema if needed; an unreachable store fails here, in one line
    if not _port_free(args.host, args.port):
        raise InputError(f"port {args.port} on {args.host} is in use; pass another --port")
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--workers",
        "1",  # a local dashboard for one user: one server process, not MLflow's default four
    ]
    artifacts = default_artifact_location(tracking_uri)
    if artifacts:
        command += ["--default-artifact-root", artifacts]
    server = subprocess.Popen(command, stdout=sys.stderr, stderr=sys.stderr)
    base = f"http://{args.host}:{args.port}"
    try:
        _wait_until_up(server, base)
        url = f"{base}/#/experiments/{experiment_id}" if experiment_id else base
        payload = {"url": url, "tracking_uri": redact(tracking_uri), "pid": server.pid}
        if args.json:
            print(json.dumps(payload), flush=True)
        else:
            print(f"MLflow UI for {payload['tracking_uri']}: {url}  (Ctrl-C stops it)", flush=True)
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
    return CommandResult({}, emitted=True)


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _wait_until_up(server: subprocess.Popen, base: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise InputError(f"the MLflow server exited with code {server.returncode} (its log is above)")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise InputError(f"the MLflow server did not answer on {base} within {STARTUP_SECONDS}s")
