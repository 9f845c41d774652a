"""``TrialLoop`` run in this process on real tiny studies: the exact budget, pruning, batched trials, a failing
evaluation, and what a second launch of the same worker samples."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from ct_tune.bench import Bench
from ct_tune.search._loop import LoopSettings, TrialLoop
from ct_tune.search._progress import TrialLine
from ct_tune.search._samplers import trial_seed
from ct_tune.tracking.keys import ATTR_KIND, ATTR_RUN_ID, TAG_FAILURE, TAG_KIND, TAG_STATE, TAG_TRIAL

import pytest
from optuna.trial import TrialState
from torch import nn

from tests._fresh import tiny_study

pytestmark = pytest.mark.slow


class Fragile(nn.Module):
    """A network that fails loudly once its ReLU is steered (CT has negative outputs, ReLU none)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8 * 64, 10)

    def forward(self, x):
        h = self.relu(self.conv(x))
        if bool((h < 0).any()):
            raise FloatingPointError("steered activation went negative")
        return self.fc(h.flatten(1))


class Usurped(nn.Module):
    """A network whose first forward pass fails every RUNNING trial of ``Usurped.storage``: what another
    worker does to a trial whose heartbeat it finds too old, while this worker is still scoring it."""

    storage = None

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8 * 64, 10)
        self.usurped = False

    def forward(self, x):
        if not self.usurped and Usurped.storage is not None:  # (forward passes before trials start: tracing)
            for summary in Usurped.storage.get_all_studies():
                for trial in Usurped.storage.get_all_trials(summary._study_id, states=(TrialState.RUNNING,)):
                    Usurped.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
                    self.usurped = True
        return self.fc(self.relu(self.conv(x)).flatten(1))


def run_loop(study, **settings):
    lines: list[TrialLine] = []
    settings.setdefault("refresh_plots", False)
    settings.setdefault("on_trial", lines.append)
    with Bench.open(study.spec, **study.spec.grouping, device="cpu") as bench:
        loop = TrialLoop(study, bench, study.tracker, LoopSettings(**settings))
        summary = loop.run()
    return summary, lines


def child_runs(study) -> dict[int, object]:
    runs = study.tracker.runs(study.experiment_id, filter_string="tags.`mlflow.parentRunId` != ''")
    return {int(run.data.tags[TAG_TRIAL]): run for run in runs}


def test_exact_budget_runs_and_plots(tmp_path, digits_checkpoint):
    study = tiny_study(tmp_path, digits_checkpoint)
    summary, lines = run_loop(study, target_total=4, refresh_plots=True)
    assert (summary.finished, summary.failed, summary.discarded, summary.reason) == (4, 0, 0, "budget reached")
    assert summary.seconds["evaluate"] > 0 and summary.seconds["tracking"] > 0
    assert [line.number for line in lines] == [0, 1, 2, 3] and summary.trials == lines
    assert all(line.state == "COMPLETE" and 0.5 < line.values["accuracy"] <= 1 for line in lines)
    assert lines[0].betas == dict.fromkeys(study.units, 1.0)  # the enqueued ReLU baseline first
    assert "trial    0 COMPLETE accuracy=" in lines[0].describe(["accuracy"])
    assert TrialLine.from_dict({**lines[0].to_dict(), "event": "trial"}) == lines[0]  # as a worker's event

    counts = study.counts()
    assert counts["COMPLETE"] == 4 and counts["RUNNING"] == 0 and counts["WAITING"] == 0
    trials = study.optuna_study.get_trials()
    kinds = [t.user_attrs.get(ATTR_KIND, "sampled") for t in trials]  # "sampled" is not stored: the default
    assert kinds == ["baseline", "sampled", "sampled", "sampled"]
    runs = child_runs(study)
    assert sorted(runs) == [0, 1, 2, 3]
    for trial in trials:
        run = runs[trial.number]
        assert trial.user_attrs[ATTR_RUN_ID] == run.info.run_id  # linked both ways
        assert run.info.status == "FINISHED" and run.data.tags[TAG_STATE] == "COMPLETE"
        assert run.data.metrics["accuracy"] == pytest.approx(trial.value)
        assert run.data.tags[TAG_KIND] == kinds[trial.number]
    parent = study.tracker.client.get_run(study.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["best.accuracy"] == max(t.value for t in trials)
    plots = {item.path for item in study.tracker.client.list_artifacts(study.parent_run_id, "plots")}
    assert {"plots/history_accuracy.png", "plots/best_beta_profile.png", "plots/importances_accuracy.png"} <= plots

    again, lines = run_loop(study, target_total=4)  # the budget is a total: nothing more to do
    assert (again.finished, again.reason, lines) == (0, "budget reached", [])
    late, _ = run_loop(study, target_total=10, deadline=time.time() - 1)
    assert (late.finished, late.reason) == (0, "timeout")


def test_median_pruner_prunes_a_bad_profile(tmp_path, digits_checkpoint):
    study = tiny_study(
        tmp_path,
        digits_checkpoint,
        search={"granularity": "block", "beta": {"low": 0.05, "high": 1.0}, "enqueue_baseline": True},
        pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        run={"device": "cpu", "batch_size": 64},  # running values every 64 of the 359 val images
    )
    study.optuna_study.enqueue_trial({f"beta.{unit}": 0.05 for unit in study.units})
    study.optuna_study.enqueue_trial({f"beta.{unit}": 0.98 for unit in study.units})  # close to ReLU: not pruned
    summary, lines = run_loop(study, target_total=3)
    assert [line.state for line in lines] == ["COMPLETE", "PRUNED", "COMPLETE"]
    assert summary.finished == 3  # a pruned trial counts against the budget
    pruned = study.optuna_study.trials[1]
    assert pruned.state == TrialState.PRUNED and pruned.intermediate_values
    run = child_runs(study)[1]
    assert run.info.status == "FINISHED" and run.data.tags[TAG_STATE] == "PRUNED"
    steps = [m.step for m in study.tracker.client.get_metric_history(run.info.run_id, "accuracy.running")]
    assert steps and max(steps) < 359  # stopped before the end of the val set
    record = study.tracker.client.download_artifacts(run.info.run_id, "trial.json")
    assert json.loads(Path(record).read_text())["pruned_at_step"] == max(steps)


def test_trials_per_batch_keeps_the_budget_exact(tmp_path, digits_checkpoint):
    study = tiny_study(tmp_path, digits_checkpoint, run={"device": "cpu", "batch_size": 256, "trials_per_batch": 3})
    summary, lines = run_loop(study, target_total=5, heartbeat_interval=1)
    assert summary.finished == 5 and sorted(line.number for line in lines) == [0, 1, 2, 3, 4]
    assert study.counts()["COMPLETE"] == 5 and study.counts()["FAIL"] == 0
    runs = child_runs(study)
    assert all(run.data.tags["ct_tune.trials_per_batch"] == "3" for run in runs.values())
    assert {run.info.status for run in runs.values()} == {"FINISHED"}
    baseline = study.optuna_study.trials[0]
    assert baseline.params == {f"beta.{u}": 1.0 for u in study.units}
    single = tiny_study(tmp_path / "single", digits_checkpoint)
    run_loop(single, target_total=1)
    assert single.optuna_study.trials[0].value == pytest.approx(baseline.value)  # scored alone or in a batch


@pytest.mark.parametrize("trials_per_batch", [1, 2])
def test_a_failing_evaluation_fails_the_trial_and_its_run(tmp_path, trials_per_batch):
    study = tiny_study(
        tmp_path,
        None,
        model={"class_path": f"{__name__}.Fragile"},
        run={"device": "cpu", "batch_size": 256, "trials_per_batch": trials_per_batch},
    )
    study.optuna_study.enqueue_trial({f"beta.{unit}": 0.8 for unit in study.units})
    with pytest.raises(FloatingPointError, match="steered activation went negative"):
        run_loop(study, target_total=3)
    trials = study.optuna_study.trials
    failed = trials[1]
    assert failed.state == TrialState.FAIL and study.counts()["RUNNING"] == 0
    run = child_runs(study)[failed.number]
    assert run.info.status == "FAILED" and run.data.tags[TAG_STATE] == "FAIL"
    assert "FloatingPointError('steered activation went negative')" in run.data.tags[TAG_FAILURE]
    assert study.tracker.client.get_run(study.parent_run_id).info.status == "FAILED"
    if trials_per_batch == 1:  # the baseline ran alone first and stands
        assert trials[0].state == TrialState.COMPLETE
    else:  # scored in one pass with the failing profile: failed with it
        assert trials[0].state == TrialState.FAIL and child_runs(study)[0].info.status == "FAILED"


def test_n_launches_draw_n_times_distinct_betas_and_a_rerun_draws_the_same(tmp_path, digits_checkpoint):
    """Each launch (a resume, another node, another launcher) draws betas no earlier launch drew; the same
    study run again from its seed draws the same betas for the same trial numbers."""
    study = tiny_study(tmp_path, digits_checkpoint)
    drawn: list[tuple[float, ...]] = []
    for launch in range(1, 4):  # the baseline first, then two random draws per launch
        _, lines = run_loop(study, target_total=1 + 2 * launch)
        drawn += [tuple(line.betas.values()) for line in lines if line.number > 0]
    assert len(drawn) == 6 and len(set(drawn)) == 6
    again = tiny_study(tmp_path / "again", digits_checkpoint)
    _, lines = run_loop(again, target_total=7)  # one launch: the same trial numbers, the same seeds
    assert [tuple(line.betas.values()) for line in lines[1:]] == drawn
    runs = child_runs(again)
    assert runs[3].data.params["sampler_seed"] == str(trial_seed(again.spec.sampler.seed, 3))


def test_a_dead_progress_pipe_does_not_fail_a_scored_trial(tmp_path, digits_checkpoint):
    study = tiny_study(tmp_path, digits_checkpoint)

    def dead_launcher(line: dict) -> None:  # what emit_event raises once the launcher is gone
        raise BrokenPipeError(32, "Broken pipe")

    with contextlib.suppress(BrokenPipeError):  # the worker may stop; the trial it scored must stand
        run_loop(study, target_total=1, on_trial=dead_launcher)
    trial = study.optuna_study.trials[0]
    run = child_runs(study)[0]
    assert run.data.tags[TAG_STATE] == "COMPLETE"  # MLflow says it was scored ...
    assert trial.state == TrialState.COMPLETE  # ... and Optuna, the truth, must agree


def test_a_trial_failed_by_another_worker_meanwhile_is_recorded_fail_and_the_loop_goes_on(tmp_path):
    study = tiny_study(tmp_path, None, model={"class_path": f"{__name__}.Usurped"})
    Usurped.storage = study.storage
    try:
        summary, lines = run_loop(study, target_total=2)
    finally:
        Usurped.storage = None
    trials = study.optuna_study.trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert (summary.finished, summary.failed) == (2, 1) and [line.state for line in lines] == [
        "FAIL",
        "COMPLETE",
        "COMPLETE",
    ]
    run = child_runs(study)[0]  # MLflow follows Optuna: the scored result is not reported as COMPLETE
    assert run.info.status == "FAILED" and run.data.tags[TAG_STATE] == "FAIL"
    assert "another worker had already ended it FAIL" in run.data.tags[TAG_FAILURE]
    assert "accuracy" not in run.data.metrics
