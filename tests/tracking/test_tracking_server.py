"""The recipe of docs/postgres_scale.md past two connections per worker: an MLflow tracking server holds
MLflow's database connections, and the workers log to it over HTTP.

A real ``mlflow server`` on loopback over a database of the password-protected PostgreSQL of
tests/postgres.py (its password in ``$PGPASSWORD``, never on its command line), a digits study created with
``--tracking-uri http://127.0.0.1:PORT`` and run by ``ct-tune study run``: every trial is in the Optuna
storage and has its run in MLflow, and while it ran, every connection to MLflow's database was the
server's (``pg_stat_activity`` sampled by ``application_name``): the worker held only its Optuna
connection.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.conftest import SOURCE_ROOT, Stores, visible_gpus
from tests.helpers import child_runs, create_study_cli, descendants, process_table, spawn, trials_of
from tests.postgres import PASSWORD

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(300)]

SERVER_NAME = "mlflow server"  # the server's application_name
WORKER_NAME = "ct-tune served test"  # the study run's


def start_tracking_server(postgres, database: str, root: Path) -> tuple[subprocess.Popen, str]:
    """The documented command: ``mlflow server`` over ``database``; its URL once ``/health`` answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "PGPASSWORD": PASSWORD,  # libpq's, so the URL on the command line holds none
        "PGAPPNAME": SERVER_NAME,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres.url(database, password=False)]
    # gunicorn's sync workers (one request at a time each: at most two connections each; docs/postgres_scale.md)
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--gunicorn-opts", "--timeout 120"]
    command += ["--artifacts-destination", str(root / "artifacts")]
    log = (root / "mlflow-server.log").open("w")
    proc = spawn(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, (root / "mlflow-server.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return proc, url
        except OSError:
            pass
        assert time.monotonic() < deadline, "the MLflow server did not answer within 120 s"
        time.sleep(0.3)


def sessions(admin_url: str) -> set[tuple[str, str]]:
    """(database, application_name) of every session on the server but this one."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT datname, application_name FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchall()
    return set(rows)


def test_a_study_logs_to_a_tracking_server_and_its_worker_holds_no_mlflow_connection(
    cli_fast, tmp_path, digits_checkpoint, postgres
):
    storage, tracking_db = postgres.url(postgres.create_database("optuna")), postgres.create_database("mlflow")
    server, url = start_tracking_server(postgres, tracking_db, tmp_path)
    stores = Stores("postgres", storage, url)
    options = create_study_cli(cli_fast, tmp_path, digits_checkpoint, stores, "served", 3)
    # One worker, in the launch's process (two worker processes cost half a minute more to start here; the
    # store calls are the same): its connections carry the name it is given.
    env = {
        "PYTHONPATH": str(SOURCE_ROOT),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PATH": "/usr/bin:/bin",
        **visible_gpus(),
    }
    command = [sys.executable, "-m", "ct_tune.cli", "study", "run", "served", *options, "--no-progress"]
    with (tmp_path / "launch.log").open("w") as log:  # a file: a pipe nobody reads while we sample could fill
        launch = spawn(command, cwd=tmp_path, env={**env, "PGAPPNAME": WORKER_NAME}, stdout=log, stderr=log)
    admin_url = postgres.url("postgres").replace("+psycopg", "")
    seen: set[tuple[str, str]] = set()
    deadline = time.monotonic() + 240
    while launch.poll() is None:
        assert time.monotonic() < deadline, "the launch did not end within 240 s"
        seen |= sessions(admin_url)
        time.sleep(0.2)
    output = (tmp_path / "launch.log").read_text()
    assert launch.returncode == 0, output

    trials = trials_of(stores, "served")  # every trial in both stores
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    runs = {int(run.data.tags["optuna.trial_number"]): run for run in child_runs(stores, "served")}
    assert {n: run.info.run_id for n, run in runs.items()} == {t.number: t.user_attrs["mlflow_run_id"] for t in trials}
    assert all(runs[t.number].data.metrics["accuracy"] == pytest.approx(t.values[0]) for t in trials)
    optuna_db = storage.rsplit("/", 1)[1]
    assert (optuna_db, WORKER_NAME) in seen, seen  # the worker was seen while it ran
    assert {name for database, name in seen if database == tracking_db} == {SERVER_NAME}, seen  # the server's only
    for pid in descendants(server.pid, process_table()) | {server.pid}:
        with contextlib.suppress(OSError):
            assert PASSWORD.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert PASSWORD not in (tmp_path / "mlflow-server.log").read_text() + output
