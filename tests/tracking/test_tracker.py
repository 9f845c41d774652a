"""``Tracker`` on a real MLflow SQL store: experiments, the study's parent run, trial runs, batching to MLflow's
limits, paging, and figures drawn in the background."""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
import uuid
from pathlib import Path

from ct_tune.tracking import RUN_STATUS, Tracker, default_artifact_location, experiment_name, metric_value, mlflow_key
from ct_tune.tracking.keys import (
    TAG_EXPERIMENT_KIND,
    TAG_FAILURE,
    TAG_NOTE,
    TAG_PARENT_RUN,
    TAG_ROLE,
    TAG_STATE,
    TAG_STUDY,
    TAG_TRIAL,
)

import pytest
from matplotlib.figure import Figure

from tests._fresh import fresh_sqlite


@pytest.fixture
def tracker(tmp_path: Path) -> Tracker:
    return Tracker(fresh_sqlite("mlflow", tmp_path / "mlruns"))


def artifacts(tracker: Tracker, run_id: str, path: str | None = None) -> list[str]:
    return sorted(item.path for item in tracker.client.list_artifacts(run_id, path))


def a_figure() -> Figure:
    figure = Figure(figsize=(2, 2))
    figure.add_subplot().plot([0, 1], [1, 0])
    return figure


def test_names_and_default_artifact_location(tmp_path):
    assert experiment_name("digits-block") == "ct-tune/digits-block"
    assert default_artifact_location(f"sqlite:///{tmp_path}/mlruns/mlflow.db") == str(tmp_path / "mlruns/artifacts")
    assert default_artifact_location("postgresql+psycopg://ctune@127.0.0.1/mlflow") is None
    assert RUN_STATUS == {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}


def test_mlflow_key_makes_unit_names_mlflow_safe():
    assert mlflow_key("beta.layer1.0.relu") == "beta.layer1.0.relu"
    assert mlflow_key("beta.features.relu()#2") == "beta.features.relu_inline-2"
    assert mlflow_key("beta.layer1.0.relu#1") != mlflow_key("beta.layer1.0.relu#2")
    from mlflow.utils.validation import _validate_metric_name, _validate_param_name

    for name in ("beta.features.relu()#2", "beta.layer3.1.relu#3", "beta.stem"):
        _validate_param_name(mlflow_key(name))  # MLflow's own check: raises on a bad key
        _validate_metric_name(mlflow_key(name))


def test_experiment_is_created_restored_and_deleted(tracker, tmp_path):
    assert tracker.experiment_id("study", create=False) is None
    created = tracker.experiment_id("study", create=True)
    experiment = tracker.client.get_experiment(created)
    assert experiment.name == "ct-tune/study" and experiment.artifact_location.startswith(str(tmp_path / "mlruns"))
    assert tracker.experiment_id("study", create=True) == created  # found, not made twice

    tracker.client.delete_experiment(created)  # deleted in the MLflow UI: the same name comes back
    assert tracker.client.get_experiment(created).lifecycle_stage == "deleted"
    assert tracker.experiment_id("study", create=True) == created
    assert tracker.client.get_experiment(created).lifecycle_stage == "active"

    assert tracker.delete_experiment("study") == created
    archived = tracker.client.get_experiment(created)
    assert archived.lifecycle_stage == "deleted" and archived.name.startswith("ct-tune/study (deleted ")
    assert tracker.experiment_id("study", create=False) is None  # the name is free again
    assert tracker.experiment_id("study", create=True) != created
    assert tracker.delete_experiment("never-made") is None


def test_study_parent_run_holds_params_spec_and_note(tracker):
    experiment = tracker.experiment_id("s", create=True)
    spec = {"search": {"granularity": "block"}, "objectives": [{"name": "accuracy"}, {"name": "probe"}]}
    run_id = tracker.create_study_run(experiment, "s", {"study": "s", "n_units": 4, "c": 0.5}, spec)
    run = tracker.client.get_run(run_id)
    assert run.info.status == "SCHEDULED" and run.info.end_time is None  # created, not yet run
    assert run.info.run_name == "study-s"
    assert run.data.params == {"study": "s", "n_units": "4", "c": "0.5"}
    assert run.data.tags[TAG_ROLE] == "study" and run.data.tags[TAG_STUDY] == "s"
    assert "block betas, objectives: accuracy, probe" in run.data.tags[TAG_NOTE]
    assert artifacts(tracker, run_id) == ["spec.json"]
    local = tracker.client.download_artifacts(run_id, "spec.json")
    assert json.loads(Path(local).read_text()) == spec

    tracker.set_status(run_id, "RUNNING")
    assert tracker.client.get_run(run_id).info.status == "RUNNING"
    time.sleep(0.3)  # a launch: the run ends when it ends, not when it was created
    tracker.set_status(run_id, "KILLED")
    first = tracker.client.get_run(run_id).info
    assert first.status == "KILLED" and first.end_time - first.start_time >= 300
    tracker.set_status(run_id, "RUNNING")  # resumed: the next launch's end is the run's end
    time.sleep(0.05)
    tracker.set_status(run_id, "FINISHED")
    second = tracker.client.get_run(run_id).info
    assert second.status == "FINISHED" and second.end_time > first.end_time


def test_experiments_open_on_runs_not_traces(tracker):
    experiment = tracker.client.get_experiment(tracker.experiment_id("kind", create=True))
    assert experiment.tags[TAG_EXPERIMENT_KIND] == "custom_model_development"


def test_float32_values_are_logged_as_the_decimal_they_stand_for(tracker):
    import torch

    accuracy = torch.tensor([True] * 886 + [False] * 114).float().mean()  # float32: 0.88599997758...
    assert float(accuracy) != 0.886 and metric_value(accuracy) == 0.886 == metric_value(float(accuracy))
    assert metric_value(1 / 3) == 1 / 3 and metric_value(12.5) == 12.5  # float64 values stay as they are
    assert math.isnan(metric_value(float("nan"))) and metric_value(1e300) == 1e300
    run_id = tracker.create_study_run(tracker.experiment_id("noise", create=True), "noise", {}, {})
    tracker.log(run_id, metrics={"probe": accuracy}, history=[("probe.running", float(accuracy), 500)])
    metrics = tracker.client.get_run(run_id).data.metrics
    assert metrics == {"probe": 0.886, "probe.running": 0.886}


def test_trial_run_opened_and_finished(tracker):
    experiment = tracker.experiment_id("s", create=True)
    parent = tracker.create_study_run(experiment, "s", {}, {})
    params = {"beta.stem": 0.9, "beta.features.relu()#2": 0.8, "c": 0.5, "trial_number": 7, "sampler": "tpe"}
    run_id = tracker.start_trial_run(
        experiment, parent, study_name="s", trial_number=7, params=params, tags={"ct_tune.worker": "1"}
    )
    run = tracker.client.get_run(run_id)
    assert run.info.status == "RUNNING" and run.info.run_name == "trial-0007"
    tags = run.data.tags
    assert tags[TAG_PARENT_RUN] == parent and tags[TAG_STUDY] == "s" and tags[TAG_TRIAL] == "7"
    assert tags[TAG_STATE] == "RUNNING" and tags["ct_tune.worker"] == "1" and tags["ct_tune.host"]
    assert run.data.params == {
        "beta.stem": "0.9",
        "beta.features.relu_inline-2": "0.8",
        "c": "0.5",
        "trial_number": "7",
        "sampler": "tpe",
    }

    history = [("accuracy.running", 0.5 + 0.1 * i, 100 * (i + 1)) for i in range(4)]
    record = {"trial": 7, "state": "COMPLETE", "results": {"accuracy": {"value": 0.9, "per_class": [0.8, 1.0]}}}
    tracker.finish_trial_run(
        run_id,
        state="COMPLETE",
        metrics={"accuracy": 0.9, "accuracy.top5": 1.0, "trial_seconds": 1.5},
        history=history,
        tags={"ct_tune.note": "x"},
        record=record,
        figure=a_figure,
    )
    tracker.flush()
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[TAG_STATE] == "COMPLETE"
    assert run.data.tags["ct_tune.note"] == "x"
    assert run.data.metrics["accuracy"] == 0.9 and run.data.metrics["accuracy.top5"] == 1.0
    steps = [(m.step, round(m.value, 6)) for m in tracker.client.get_metric_history(run_id, "accuracy.running")]
    assert sorted(steps) == [(100, 0.5), (200, 0.6), (300, 0.7), (400, 0.8)]
    assert artifacts(tracker, run_id) == ["beta_profile.png", "trial.json"]
    assert json.loads(Path(tracker.client.download_artifacts(run_id, "trial.json")).read_text()) == record


@pytest.mark.parametrize(("state", "status"), [("PRUNED", "FINISHED"), ("FAIL", "FAILED"), ("WEIRD", "FAILED")])
def test_trial_run_status_follows_the_optuna_state(tracker, state, status):
    experiment = tracker.experiment_id("s", create=True)
    run_id = tracker.start_trial_run(experiment, "p", study_name="s", trial_number=0, params={}, tags={})
    tracker.finish_trial_run(run_id, state=state, metrics={"trial_seconds": 0.1})
    run = tracker.client.get_run(run_id)
    assert run.info.status == status and run.data.tags[TAG_STATE] == state
    assert artifacts(tracker, run_id) == []  # no record, no figure: nothing logged


def test_close_run_marks_a_run_left_running(tracker, caplog):
    experiment = tracker.experiment_id("s", create=True)
    run_id = tracker.start_trial_run(experiment, "p", study_name="s", trial_number=3, params={}, tags={})
    tracker.close_run(run_id, reason="worker died " + "x" * 1000)
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags[TAG_STATE] == "FAIL"
    assert run.data.tags[TAG_FAILURE].startswith("worker died") and len(run.data.tags[TAG_FAILURE]) == 500
    other = tracker.start_trial_run(experiment, "p", study_name="s", trial_number=4, params={}, tags={})
    tracker.close_run(other, state="PRUNED")
    run = tracker.client.get_run(other)
    assert run.info.status == "FINISHED" and TAG_FAILURE not in run.data.tags
    with caplog.at_level(logging.WARNING, logger="ct_tune.tracking._tracker"):
        tracker.close_run("0" * 32)  # no such run: a warning, never an exception
        tracker.set_status("0" * 32, "FINISHED")
    messages = [r.getMessage() for r in caplog.records if r.name == "ct_tune.tracking._tracker"]
    assert len(messages) == 2 and "could not close MLflow run" in messages[0] and "could not set" in messages[1]


def test_log_batches_past_mlflows_limits(tracker):
    """MLflow takes at most 100 params, 100 tags and 1000 entities per log_batch call."""
    experiment = tracker.experiment_id("s", create=True)
    run_id = tracker.client.create_run(experiment).info.run_id
    params = {f"beta.unit{i:03d}": i / 1000 for i in range(250)}
    params["long"] = "y" * 10_000
    params["listed"] = [1, 2]
    tags = {f"tag{i:03d}": str(i) for i in range(230)}
    metrics = {f"m{i:03d}": float(i) for i in range(40)}
    history = [("running", float(step), step) for step in range(2_600)]
    tracker.log(run_id, params=params, tags=tags, metrics=metrics, history=history, step=5)
    run = tracker.client.get_run(run_id)
    assert len(run.data.params) == 252 and run.data.params["beta.unit249"] == "0.249"
    assert run.data.params["long"] == "y" * 5997 + "..." and run.data.params["listed"] == "[1, 2]"
    assert {k: v for k, v in run.data.tags.items() if k.startswith("tag")} == tags
    assert run.data.metrics == {**metrics, "running": 2599.0}
    assert {m.step for m in tracker.client.get_metric_history(run_id, "m000")} == {5}
    steps = [m.step for m in tracker.client.get_metric_history(run_id, "running")]
    assert sorted(steps) == list(range(2_600))
    tracker.log(run_id)  # nothing to write: no call


def test_runs_pages_past_1000_runs(tracker, tmp_path):
    """1,000 MLflow create_run calls take ~30 s here: one run is made by MLflow, the others are copies of its
    rows under new ids, read back through MLflow's own paged search."""
    experiment = tracker.experiment_id("s", create=True)
    first = tracker.client.create_run(experiment, tags={TAG_STATE: "RUNNING"}).info.run_id
    tracker.client.create_run(experiment, tags={TAG_STATE: "FAIL"})
    with sqlite3.connect(tmp_path / "mlruns/mlflow.db") as connection:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(runs)")]
        copied = ", ".join("?" if c == "run_uuid" else c for c in columns)
        copy_run = f"INSERT INTO runs ({', '.join(columns)}) SELECT {copied} FROM runs WHERE run_uuid = ?"
        copy_tags = "INSERT INTO tags (key, value, run_uuid) SELECT key, value, ? FROM tags WHERE run_uuid = ?"
        for _ in range(1_100):
            new = uuid.uuid4().hex
            connection.execute(copy_run, (new, first))
            connection.execute(copy_tags, (new, first))
    everything = tracker.runs(experiment)
    assert len(everything) == 1_102 and len({run.info.run_id for run in everything}) == 1_102
    running = tracker.runs(experiment, filter_string=f"tags.`{TAG_STATE}` = 'RUNNING'")
    assert len(running) == 1_101 and all(run.data.tags[TAG_STATE] == "RUNNING" for run in running)


def test_figures_are_logged_in_the_background_and_flushed(tracker, caplog):
    import matplotlib.pyplot as plt

    experiment = tracker.experiment_id("s", create=True)
    run_id = tracker.client.create_run(experiment).info.run_id
    drawn: list[Figure] = []

    def build() -> dict[str, Figure]:
        drawn.extend([a_figure(), plt.figure()])  # one of ours, one that pyplot keeps until closed
        return {"plots/a.png": drawn[0], "plots/b.png": drawn[1]}

    tracker.log_figures_later(run_id, build)
    tracker.log_figures_later(run_id, lambda: {"c.png": a_figure()})
    tracker.flush()
    assert artifacts(tracker, run_id) == ["c.png", "plots"]
    assert artifacts(tracker, run_id, "plots") == ["plots/a.png", "plots/b.png"]
    assert drawn[1].number not in plt.get_fignums()  # closed once logged

    def broken() -> dict[str, Figure]:
        raise RuntimeError("matplotlib ran out of fonts")

    with caplog.at_level(logging.WARNING, logger="ct_tune.tracking._tracker"):
        tracker.log_figures_later(run_id, broken)
        tracker.flush()  # a failed figure is a warning: plots never fail a study
    expected = "could not log a figure to MLflow: matplotlib ran out of fonts"
    assert any(expected in record.getMessage() for record in caplog.records)
    tracker.flush()  # nothing pending
