"""The MLflow UI on a ct-tune tracking store: an ``mlflow server`` process, started and stopped cleanly.

One server process (``--workers 1``: a local dashboard for one user, not MLflow's default four), artifacts
served from where ct-tune writes them next to a SQLite store, and ``/health`` polled until it answers.
MLflow's job execution (seven huey consumers of about 180 MB each, for GenAI jobs ct-tune never submits)
is off unless ``$MLFLOW_SERVER_ENABLE_JOB_EXECUTION`` says otherwise.

``mlflow server`` starts uvicorn and its job runner as children and does not stop them when it is
terminated alone: the server gets a process group of its own, and ``stop()`` ends that whole group.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

from ct_tune._errors import InputError
from ct_tune.stores import open_mlflow_client, redact
from ct_tune.tracking._tracker import default_artifact_location

__all__ = ["UIServer", "experiment_url", "start_ui"]

STARTUP_SECONDS = 120
STOP_SECONDS = 10  # SIGTERM to the server's group, then SIGKILL


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
        """End the server and everything it started (uvicorn, job consumers): its whole process group."""
        group = self.process.pid  # the group's id: it was started as the group's leader
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            if _group_ended(self.process, STOP_SECONDS):
                break
        self.process.wait()


def _group_ended(leader: subprocess.Popen, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        leader.poll()  # reaps the leader, which would otherwise keep the group alive as a zombie
        try:
            os.killpg(leader.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def start_ui(
    tracking_uri: str, *, host: str = "127.0.0.1", port: int = 5000, experiment_id: str | None = None
) -> UIServer:
    """Start the MLflow UI on ``tracking_uri`` and return once it answers (opened on the experiment, if given)."""
    if not 1 <= port <= 65535:
        raise InputError(f"--port must be between 1 and 65535, not {port}")
    _check_address(host, port)
    open_mlflow_client(tracking_uri)  # creates the schema if needed; an unreachable store fails here, in one line
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
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
    # The store's URL (a password in it, on PostgreSQL) goes in the environment, which only this user can
    # read, not on the command line, which `ps` shows to every user of the machine.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ, "MLFLOW_BACKEND_STORE_URI": tracking_uri}
    process = subprocess.Popen(command, stdout=sys.stderr, stderr=sys.stderr, env=env, process_group=0)
    base = f"http://{host}:{port}"
    server = UIServer(process, experiment_url(base, experiment_id) if experiment_id else base, redact(tracking_uri))
    try:
        _wait_until_up(process, base)
    except BaseException:
        server.stop()
        raise
    return server


def experiment_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table. MLflow 3's UI opens an experiment in its GenAI mode (traces first)
    unless the URL asks for the machine-learning workflow; ``/runs`` is that mode's runs table."""
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def _check_address(host: str, port: int) -> None:
    """Bind ``host:port`` once, as the server will: each reason it cannot is a different fix."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror:
        raise InputError(f"--host {host!r} is not an address or host name; pass e.g. 127.0.0.1 or 0.0.0.0") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise InputError(f"port {port} on {host} is in use; pass another --port") from None
            if error.errno == errno.EADDRNOTAVAIL:
                raise InputError(
                    f"--host {host} is not an address of this machine; pass one of its addresses, "
                    "127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
                ) from None
            if error.errno == errno.EACCES:
                raise InputError(f"port {port} needs administrator rights; pass a --port above 1023") from None
            reason = error.strerror
            raise InputError(f"cannot listen on {host}:{port} ({reason}); pass another --host or --port") from None


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
