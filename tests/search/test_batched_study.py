"""A study with run.trials_per_batch > 1 through the real CLI: K trials asked, scored and told together."""

from __future__ import annotations

import sqlite3

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.conftest import write_spec
from tests.helpers import run_betas

pytestmark = pytest.mark.slow


def test_two_workers_three_trials_per_batch_finish_exactly_the_budget(cli, cli_fast, tmp_path, digits_checkpoint):
    storage, tracking = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    write_spec(
        tmp_path / "batched.yaml",
        digits_checkpoint,
        name="batched",
        objectives=[{"name": "accuracy"}, {"name": "probe", "max_iter": 20}],
        sampler={"name": "tpe", "seed": 0, "n_startup_trials": 2},
        budget={"n_trials": 7},
        run={"device": "cpu", "batch_size": 128, "trials_per_batch": 3},
    )
    created = cli_fast("study", "create", "batched.yaml", "--storage", storage, "--tracking-uri", tracking)
    assert created.returncode == 0, created.stderr
    result = cli(
        "study",
        "run",
        "batched",
        "--workers",
        "2",
        "--oversubscribe",
        "--storage",
        storage,
        "--tracking-uri",
        tracking,
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    logs = "".join(path.read_text() for path in (tmp_path / "logs" / "batched").glob("*.log"))
    assert "3 trials per batch" in logs and "no pruning" in logs

    trials = optuna.load_study(study_name="batched", storage=storage).get_trials()
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 7
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert [t for t in trials if t.state == TrialState.FAIL] == [
        t for t in trials if "ct_tune.discarded" in t.user_attrs
    ]
    baseline = trials[0]
    assert set(baseline.params[name] for name in baseline.params if name.startswith("beta.")) == {1.0}

    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("ct-tune/batched")
    runs = {
        int(run.data.tags["optuna.trial_number"]): run
        for run in client.search_runs([experiment.experiment_id], max_results=100)
        if "mlflow.parentRunId" in run.data.tags
    }
    assert sorted(runs) == sorted(t.number for t in finished)
    for trial in finished:
        run = runs[trial.number]
        assert run.info.status == "FINISHED"
        assert run.data.tags["ct_tune.trials_per_batch"] == "3"
        assert run.data.metrics["accuracy"] == pytest.approx(trial.values[0])
        assert run.data.metrics["probe"] == pytest.approx(trial.values[1])
        assert run_betas(run) == {k: v for k, v in trial.params.items() if k.startswith("beta.")}

    # Every scored trial had its heartbeat recorded while it ran (a batch keeps all of its trials alive).
    with sqlite3.connect(tmp_path / "optuna.db") as db:
        beating = {row[0] for row in db.execute("SELECT trial_id FROM trial_heartbeats")}
    assert {t._trial_id for t in finished} <= beating
