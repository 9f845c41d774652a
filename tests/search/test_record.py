"""``TrialRecorder`` on real stores: a trial's run opened and closed with params, tags, metrics and
trial.json; a dead worker's run closed and its trial retried; memory metrics."""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

from ct_tune.objectives import AccuracyObjective, AdversarialObjective, ObjectiveResult
from ct_tune.search._record import (
    TrialRecorder,
    memory_metrics,
    mlflow_beta_params,
    objective_tags,
    stale_trial_callback,
)
from ct_tune.stores import open_optuna_storage
from ct_tune.tracking import Tracker
from ct_tune.tracking.keys import ATTR_RUN_ID, TAG_ATTACK, TAG_DEVICE, TAG_FAILURE, TAG_KIND, TAG_STATE, TAG_WORKER

import optuna
import pytest
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from tests._fresh import fresh_sqlite

BETAS = {"stem": 0.9, "layer1.0": 0.75, "features.relu()#2": 1.0}


def recorder_on(tracker: Tracker, **options) -> TrialRecorder:
    experiment = tracker.experiment_id("rec", create=True)
    parent = tracker.create_study_run(experiment, "rec", {}, {})
    settings = {
        "sampler": "tpe",
        "worker": 2,
        "device_label": "cpu (2 threads)",
        "device": torch.device("cpu"),
        "trials_per_batch": 3,
        "lowest_beta": 0.6,
        **options,
    }
    return TrialRecorder(tracker, study_name="rec", experiment_id=experiment, parent_run_id=parent, **settings)


def results() -> dict[str, ObjectiveResult]:
    return {
        "accuracy": ObjectiveResult(
            "accuracy", 0.9, {"top5": 0.99, "per_class": [0.8, 1.0], "flag": True, "note": "x"}, 1.5, 1.0
        ),
        "adversarial": ObjectiveResult("adversarial", 0.4, {"clean_accuracy": 0.91, "n": 300}, 3.0, 2.5),
    }


def test_open_and_close_a_trials_run(stores):
    tracker = Tracker(stores.tracking)
    recorder = recorder_on(tracker)
    study = optuna.create_study(storage=open_optuna_storage(stores.storage), study_name="rec")
    trial = study.ask()
    run_id = recorder.open(trial, BETAS, 0.5, "warm-start", sampler_seed=7)
    assert study.trials[0].user_attrs[ATTR_RUN_ID] == run_id
    run = tracker.client.get_run(run_id)
    assert run.info.status == "RUNNING" and run.data.tags[TAG_STATE] == "RUNNING"
    assert run.data.params == {  # zero-padded network order: MLflow's runs table sorts params by name
        "beta.00.stem": "0.9",
        "beta.01.layer1.0": "0.75",
        "beta.02.features.relu_inline-2": "1.0",
        "c": "0.5",
        "trial_number": "0",
        "sampler": "tpe",
        "sampler_seed": "7",
    }
    tags = run.data.tags
    assert (tags[TAG_WORKER], tags[TAG_DEVICE], tags[TAG_KIND]) == ("2", "cpu (2 threads)", "warm-start")
    assert tags["ct_tune.trials_per_batch"] == "3" and run.data.tags["mlflow.parentRunId"] == recorder.parent_run_id

    history = [("accuracy.running", 0.85, 128), ("accuracy.running", 0.9, 256)]
    metrics = recorder.close(
        0, run_id, state="COMPLETE", betas=BETAS, c=0.5, results=results(), history=history, seconds=4.0, failure=""
    )
    assert set(metrics) == {
        "trial_seconds",
        "accuracy",
        "accuracy.top5",
        "adversarial",
        "adversarial.clean_accuracy",
        "adversarial.n",
        "compute_seconds",
        "worker_rss_mb",
    }  # numbers only: no booleans, strings or lists
    assert metrics["compute_seconds"] == 3.5 and metrics["trial_seconds"] == 4.0
    tracker.flush()
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[TAG_STATE] == "COMPLETE" and TAG_FAILURE not in run.data.tags
    assert run.data.metrics == pytest.approx({**metrics, "accuracy.running": 0.9})  # running: the last value
    assert [m.step for m in tracker.client.get_metric_history(run_id, "accuracy.running")] == [128, 256]
    artifacts = {item.path for item in tracker.client.list_artifacts(run_id)}
    assert artifacts == {"beta_profile.png", "trial.json"}
    record = json.loads(Path(tracker.client.download_artifacts(run_id, "trial.json")).read_text())
    assert record == {
        "trial": 0,
        "state": "COMPLETE",
        "betas": BETAS,
        "c": 0.5,
        "results": {name: result.to_dict() for name, result in results().items()},
    }


def test_pruned_and_failed_trials(tmp_path):
    tracker = Tracker(fresh_sqlite("mlflow", tmp_path / "mlruns"))
    recorder = recorder_on(tracker, trials_per_batch=1)
    study = optuna.create_study()
    pruned, failed = study.ask(), study.ask()
    pruned_run = recorder.open(pruned, BETAS, 0.5, "sampled", sampler_seed=8)
    assert "ct_tune.trials_per_batch" not in tracker.client.get_run(pruned_run).data.tags
    history = [("accuracy.running", 0.3, 100), ("accuracy.running", 0.31, 200)]
    recorder.close(
        0, pruned_run, state="PRUNED", betas=BETAS, c=0.5, results={}, history=history, seconds=1, failure=""
    )
    failed_run = recorder.open(failed, BETAS, 0.5, "sampled", sampler_seed=9)
    metrics = recorder.close(
        1, failed_run, state="FAIL", betas=BETAS, c=0.5, results={}, history=[], seconds=1, failure="OOM"
    )
    assert "compute_seconds" not in metrics  # no objective finished
    tracker.flush()
    run = tracker.client.get_run(pruned_run)
    assert run.info.status == "FINISHED" and run.data.tags[TAG_STATE] == "PRUNED"
    record = json.loads(Path(tracker.client.download_artifacts(pruned_run, "trial.json")).read_text())
    assert record["pruned_at_step"] == 200 and record["results"] == {}
    run = tracker.client.get_run(failed_run)
    assert run.info.status == "FAILED" and run.data.tags[TAG_FAILURE] == "OOM"


def test_an_mlflow_failure_at_close_is_a_warning(tmp_path, caplog):
    tracker = Tracker(fresh_sqlite("mlflow", tmp_path / "mlruns"))
    recorder = recorder_on(tracker)
    with caplog.at_level(logging.WARNING, logger="ct_tune.search._record"):
        metrics = recorder.close(
            5, "0" * 32, state="COMPLETE", betas=BETAS, c=0.5, results=results(), history=[], seconds=1, failure=""
        )
    assert metrics["accuracy"] == 0.9  # the trial's result stands: Optuna is the truth
    assert any("trial 5: could not finish MLflow run" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_a_dead_workers_trial_is_closed_and_retried(tmp_path, caplog):
    tracker = Tracker(fresh_sqlite("mlflow", tmp_path / "mlruns"))
    recorder = recorder_on(tracker)
    storage = open_optuna_storage(
        fresh_sqlite("optuna", tmp_path / "studies"),
        heartbeat_interval=1,
        grace_period=1,
        stale_trial_callback=stale_trial_callback(lambda: tracker, recorder.experiment_id),
    )
    study = optuna.create_study(storage=storage, study_name="rec")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trial = study.ask()
    betas = {"stem": trial.suggest_float("beta.stem", 0.7, 1.0)}
    run_id = recorder.open(trial, betas, 0.5, "sampled", sampler_seed=7)
    # and a run the trial never named: a worker killed between opening a run and storing its id on the trial
    unnamed = tracker.start_trial_run(
        recorder.experiment_id, recorder.parent_run_id, study_name="rec", trial_number=trial.number, params={}, tags={}
    )
    storage.record_heartbeat(trial._trial_id)  # then the worker dies
    time.sleep(2.5)
    with caplog.at_level(logging.WARNING, logger="ct_tune.search._record"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)  # what any other worker does before its next trial
    dead, retry = study.trials
    assert dead.state == TrialState.FAIL and retry.state == TrialState.WAITING
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == dead.number
    assert retry.params == dead.params and retry.user_attrs[ATTR_RUN_ID] == run_id  # inherited, replaced at open
    for closed in (run_id, unnamed):
        run = tracker.client.get_run(closed)
        assert run.info.status == "FAILED" and run.data.tags[TAG_STATE] == "FAIL"
        assert run.data.tags[TAG_FAILURE] == "worker stopped sending heartbeats"
    assert any(
        "its worker stopped responding; marked FAIL and enqueued again" in r.getMessage() for r in caplog.records
    )


def test_memory_metrics_on_the_cpu():
    metrics = memory_metrics(torch.device("cpu"))
    assert set(metrics) == {"worker_rss_mb"}
    status = Path("/proc/self/status").read_text()
    vm_rss_mb = int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024
    assert metrics["worker_rss_mb"] == pytest.approx(vm_rss_mb, rel=0.05)
    assert memory_metrics(None) == {"worker_rss_mb": pytest.approx(vm_rss_mb, rel=0.05)}


def test_beta_params_sort_in_network_order_and_runs_name_the_attack(tmp_path):
    units = [f"layer{i // 10}.{i % 10}" for i in range(120)]  # more than 100 units: three digits
    names = list(mlflow_beta_params(dict.fromkeys(reversed(units), 0.9), units))
    assert names[0] == "beta.119.layer11.9" and sorted(names) == [f"beta.{i:03d}.{u}" for i, u in enumerate(units)]

    tracker = Tracker(fresh_sqlite("mlflow", tmp_path / "mlruns"))
    objectives = [AccuracyObjective(), AdversarialObjective(attack="autoattack")]
    recorder = recorder_on(tracker, run_tags=objective_tags(objectives), units=["stem", "layer1.0"])
    run_id = recorder.open(optuna.create_study().ask(), {"layer1.0": 0.8, "stem": 0.9}, 0.5, "sampled", sampler_seed=1)
    run = tracker.client.get_run(run_id)
    assert run.data.tags[TAG_ATTACK] == objectives[1].version and "autoattack-standard" in objectives[1].version
    assert {k: v for k, v in run.data.params.items() if k.startswith("beta.")} == {
        "beta.00.stem": "0.9",
        "beta.01.layer1.0": "0.8",
    }
    assert objective_tags([AccuracyObjective()]) == {}
