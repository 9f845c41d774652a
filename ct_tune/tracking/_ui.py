"""The MLflow UI on a ct-tune tracking store: an ``mlflow server`` process, started and stopped cleanly.

One server process (``--workers 1``: a local dashboard for one user, not MLflow's default four), artifacts
served from where ct-tune writes them next to a SQLite store, and ``/health`` polled until it answers.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

from ct_tune._errors import InputError
from ct_tune.stores import open_mlflow_client, redact
from ct_tune.tracking._tracker import default_artifact_location

__all__ = ["UIServer", "start_ui"]

STARTUP_SECONDS = 120


@dataclass
class UIServer:
    """A running MLflow UI; ``wait()`` blocks until it exits, ``stop()`` ends it."""

    process: subprocess.Popen
    url: str
    tracking_uri: str  # redacted

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait(self) -> int:
        return self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_ui(
    tracking_uri: str, *, host: str = "127.0.0.1", port: int = 5000, experiment_id: str | None = None
) -> UIServer:
    """Start the MLflow UI on ``tracking_uri`` and return once it answers (opened on the experiment, if given)."""
    open_mlflow_client(tracking_uri)  # creates the schema if needed; an unreachable store fails here, in one line
    if not _port_free(host, port):
        raise InputError(f"port {port} on {host} is in use; pass another --port")
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    artifacts = default_artifact_location(tracking_uri)
    if artifacts:
        command += ["--default-artifact-root", artifacts]
    process = subprocess.Popen(command, stdout=sys.stderr, stderr=sys.stderr)
    base = f"http://{host}:{port}"
    server = UIServer(process, f"{base}/#/experiments/{experiment_id}" if experiment_id else base, redact(tracking_uri))
    try:
        _wait_until_up(process, base)
    except BaseException:
        server.stop()
        raise
    return server


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _wait_until_up(process: subprocess.Popen, base: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise InputError(f"the MLflow server exited with code {process.returncode} (its log is above)")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise InputError(f"the MLflow server did not answer on {base} within {STARTUP_SECONDS}s")
