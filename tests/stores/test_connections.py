"""What a process of ct-tune holds on a PostgreSQL server: one connection to the Optuna storage and one to
the MLflow store, whatever it did before (docs/postgres_scale.md).

A worker-like process on the password-protected server of tests/postgres.py opens both stores through
ct-tune's store layer, runs trials the way a worker does (a heartbeat thread beating while the trial's
MLflow run is opened and its values logged, a figure written from the background thread, the budget's
count, ``tell``), and then waits: what it holds then is counted in ``pg_stat_activity`` by its
``application_name``. Before the pools were made lean the same process held four: each pool kept what
two threads, or MLflow's nested sessions, had once used at the same time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from ct_tune.stores._mlflow import lean_pool
from ct_tune.tracking import Tracker

import optuna
import pytest

from tests.conftest import SOURCE_ROOT
from tests.helpers import read_until, spawn

pytestmark = [pytest.mark.postgres]

NAME = "ct-tune lean test"

WORKER = textwrap.dedent(
    """
    import sys

    import ct_tune
    from ct_tune.stores import count_states, open_optuna_storage
    from ct_tune.tracking import Tracker, beta_profile_figure
    from ct_tune.workers import Heartbeats

    import optuna
    import time

    storage_url, tracking_uri = sys.stdin.readline().split()  # the URLs hold the password: not in argv
    storage = open_optuna_storage(storage_url, heartbeat_interval=1, grace_period=60)
    study = optuna.load_study(study_name="lean", storage=storage)
    tracker = Tracker(tracking_uri)
    experiment = tracker.experiment_id("lean", create=False)
    parent = tracker.create_study_run(experiment, "lean", params={}, spec={})
    for _ in range(3):
        trial = study.ask()
        betas = {f"beta.{i}": trial.suggest_float(f"beta.{i}", 0.7, 1.0) for i in range(4)}
        count_states(storage, storage.get_study_id_from_name("lean"))
        with Heartbeats(storage, [trial._trial_id]):
            run_id = tracker.start_trial_run(
                experiment, parent, study_name="lean", trial_number=trial.number, params=betas, tags={}
            )
            trial.set_user_attr("mlflow_run_id", run_id)
            time.sleep(1.2)  # a beat or two from the heartbeat thread
            study.tell(trial, 0.5)
            tracker.finish_trial_run(
                run_id,
                state="COMPLETE",
                metrics={"accuracy": 0.5},
                history=[("accuracy", 0.4, 1)],
                record={"trial": trial.number},
                figure=lambda: beta_profile_figure(betas, title="lean"),
            )
    tracker.flush()
    print("idle", flush=True)
    sys.stdin.readline()  # held open until the test has counted
    """
)


def held(admin_url: str, name: str) -> dict[str, int]:
    """Connections by database of the processes named ``name``."""
    import psycopg

    query = "SELECT datname, count(*) FROM pg_stat_activity WHERE application_name = %s GROUP BY datname"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        return dict(connection.execute(query, (name,)).fetchall())


def test_a_worker_like_process_holds_one_connection_per_store(postgres, tmp_path):
    storage, tracking = (postgres.url(postgres.create_database(name)) for name in ("optuna", "mlflow"))
    optuna.create_study(study_name="lean", storage=storage)
    Tracker(tracking).experiment_id("lean", create=True)
    proc = spawn(
        [sys.executable, "-c", WORKER],
        cwd=tmp_path,  # MLflow's artifacts of a database store: ./mlartifacts
        env={"PYTHONPATH": str(SOURCE_ROOT), "MLFLOW_DISABLE_TELEMETRY": "true", "PGAPPNAME": NAME},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc.stdin.write(f"{storage} {tracking}\n")
    proc.stdin.flush()
    read_until(proc, r"^idle", [], timeout=120, stream="stdout")
    found = held(postgres.url("postgres").replace("+psycopg", ""), NAME)
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0
    databases = {storage.rsplit("/", 1)[1]: "optuna", tracking.rsplit("/", 1)[1]: "mlflow"}
    assert {databases[name]: count for name, count in found.items()} == {"optuna": 1, "mlflow": 1}
    trials = optuna.load_study(study_name="lean", storage=storage).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3


def test_mlflows_pool_settings_are_a_database_servers_and_the_users_win(monkeypatch):
    """Set only while MLflow creates its engine on a database server, never over the user's own, and gone
    afterwards: a ``mlflow server`` started later (the UI) keeps MLflow's pool, which its threads need."""
    size, overflow = "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"
    monkeypatch.delenv(size, raising=False)
    monkeypatch.delenv(overflow, raising=False)
    with lean_pool("postgresql+psycopg://ctune@127.0.0.1/mlflow"):
        assert (os.environ[size], os.environ[overflow]) == ("1", "2")
    assert size not in os.environ and overflow not in os.environ
    with lean_pool("sqlite:///mlruns/mlflow.db"):
        assert size not in os.environ
    monkeypatch.setenv(size, "4")
    with lean_pool("postgresql://ctune@db/mlflow"):
        assert (os.environ[size], os.environ[overflow]) == ("4", "2")
    assert os.environ[size] == "4" and overflow not in os.environ
