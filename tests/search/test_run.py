"""What a launch repairs before its workers start (baseline and grid trials enqueued again, MLflow runs left
RUNNING closed), and the checks of ``RunOptions``."""

from __future__ import annotations

import math

from ct_tune import InputError
from ct_tune.search import RunOptions
from ct_tune.search._repair import close_orphan_runs, requeue_initial_trials
from ct_tune.search._run import WorkerSettings
from ct_tune.tracking.keys import ATTR_KIND, ATTR_RUN_ID, TAG_FAILURE, TAG_STATE

import pytest
from optuna.trial import TrialState

from tests._fresh import tiny_study


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_trials": 0}, "--n-trials must be at least 1, not 0"),
        ({"timeout": 0.0}, "--timeout must be positive, not 0.0"),
        ({"timeout": -5.0}, "--timeout must be positive"),
        ({"timeout": math.inf}, "--timeout must be positive, not inf"),
        ({"timeout": math.nan}, "--timeout must be positive, not nan"),
        ({"heartbeat": 0}, "--heartbeat must be at least 1 second, not 0"),
        ({"heartbeat": 10, "grace": 10}, "--grace (10 s) must be longer than --heartbeat (10 s)"),
        ({"heartbeat": 5, "grace": 2}, "--grace (2 s) must be longer than --heartbeat (5 s)"),
    ],
)
def test_run_options_check(options, message):
    with pytest.raises(InputError) as error:
        RunOptions(**options).check()
    assert message in str(error.value)


def test_run_options_that_pass():
    RunOptions().check()
    RunOptions(n_trials=1, timeout=0.5, heartbeat=1, grace=2, workers=None).check()


def test_worker_settings_round_trip():
    settings = WorkerSettings(
        study="s",
        storage_url="postgresql+psycopg://u:pw@h/db",
        tracking_uri="sqlite:////tmp/m.db",
        worker=3,
        device="cuda",
        threads=4,
        target_total=20,
        deadline=1.5e9,
        heartbeat=5,
        grace=30,
        sys_path=["/src"],
    )
    data = settings.to_dict()
    assert WorkerSettings.from_dict(data) == settings
    assert WorkerSettings.from_dict({**data, "from_a_newer_launcher": 1}) == settings  # unknown keys ignored
    assert WorkerSettings.from_dict({"study": "s", "storage_url": "a", "tracking_uri": "b"}).heartbeat == 10


@pytest.mark.slow
def test_failed_initial_trials_are_enqueued_again(tmp_path, digits_checkpoint):
    study = tiny_study(
        tmp_path,
        digits_checkpoint,
        search={"granularity": "global", "enqueue_baseline": True, "enqueue_paper_grid": True},
    )
    optuna_study = study.optuna_study
    assert study.counts()["WAITING"] == 31
    assert requeue_initial_trials(study) == 0  # all waiting: nothing to add
    baseline = optuna_study.ask()  # a worker took the baseline and crashed (or was interrupted)
    assert optuna_study.trials[baseline.number].system_attrs["fixed_params"] == {"beta.global": 1.0}
    optuna_study.tell(baseline, state=TrialState.FAIL)
    grid = optuna_study.ask()
    optuna_study.tell(grid, 0.9)  # a grid trial that completed stays done
    assert requeue_initial_trials(study) == 1
    waiting = optuna_study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 30
    again = [t for t in waiting if t.system_attrs["fixed_params"] == {"beta.global": 1.0}]
    assert len(again) == 1 and again[0].user_attrs[ATTR_KIND] == "baseline"
    assert requeue_initial_trials(study) == 0  # once is enough


@pytest.mark.slow
def test_runs_left_running_are_closed(tmp_path, digits_checkpoint):
    study = tiny_study(tmp_path, digits_checkpoint)
    tracker, optuna_study = study.tracker, study.optuna_study

    def run_of(trial_number: int) -> str:
        return tracker.start_trial_run(
            study.experiment_id,
            study.parent_run_id,
            study_name=study.name,
            trial_number=trial_number,
            params={},
            tags={},
        )

    failed = optuna_study.ask()
    failed_run = run_of(failed.number)
    failed.set_user_attr(ATTR_RUN_ID, failed_run)
    optuna_study.tell(failed, state=TrialState.FAIL)  # the database was gone when its worker tried to close the run
    alive = optuna_study.ask()
    alive_run = run_of(alive.number)
    alive.set_user_attr(ATTR_RUN_ID, alive_run)  # running right now, elsewhere: left alone
    stray_run = run_of(alive.number)  # a run the same trial number never adopted (its worker died before)
    gone_run = run_of(99)  # a trial that does not exist (any more)
    finished_run = run_of(98)
    tracker.close_run(finished_run, state="COMPLETE")
    told = optuna_study.ask()  # its worker was killed between Optuna's tell and closing the run
    told_run = run_of(told.number)
    told.set_user_attr(ATTR_RUN_ID, told_run)
    optuna_study.tell(told, 0.875)
    unnamed = optuna_study.ask()  # its worker opened the run and is about to store its id: left alone
    unnamed_run = run_of(unnamed.number)
    half = optuna_study.ask()  # the store stopped between the run's state tag (with its values) and its status
    half_run = run_of(half.number)
    half.set_user_attr(ATTR_RUN_ID, half_run)
    optuna_study.tell(half, 0.5)
    tracker.log(half_run, metrics={"accuracy": 0.5}, tags={TAG_STATE: "COMPLETE"})
    assert tracker.client.get_run(half_run).info.status == "RUNNING"

    tracker.set_status(study.parent_run_id, "RUNNING")  # a launch is running: the study's run is no orphan

    assert close_orphan_runs(study) == 5
    parent = tracker.client.get_run(study.parent_run_id)
    assert parent.info.status == "RUNNING" and TAG_FAILURE not in parent.data.tags
    run = tracker.client.get_run(half_run)
    assert run.info.status == "FINISHED" and run.data.tags[TAG_STATE] == "COMPLETE"
    assert [m.value for m in tracker.client.get_metric_history(half_run, "accuracy")] == [0.5]  # not logged twice
    for run_id in (failed_run, stray_run, gone_run):
        run = tracker.client.get_run(run_id)
        assert run.info.status == "FAILED" and run.data.tags[TAG_STATE] == "FAIL"
        assert run.data.tags[TAG_FAILURE] == "its worker stopped before closing it"
    run = tracker.client.get_run(told_run)  # MLflow follows Optuna: completed, with its value
    assert run.info.status == "FINISHED" and run.data.tags[TAG_STATE] == "COMPLETE"
    assert run.data.metrics == {"accuracy": 0.875} and TAG_FAILURE not in run.data.tags
    assert tracker.client.get_run(unnamed_run).info.status == "RUNNING"
    assert tracker.client.get_run(alive_run).info.status == "RUNNING"
    assert tracker.client.get_run(finished_run).info.status == "FINISHED"
    assert close_orphan_runs(study) == 0
