"""What a launch repairs before its workers start, and again when they end.

A baseline or paper-grid trial whose attempt failed is enqueued again (the ReLU baseline is always part of
the study), and MLflow runs left RUNNING by workers that stopped are closed with the state Optuna holds for
their trial (Optuna is the truth of a study; MLflow follows it). Done once per launch, in the launcher:
workers racing on these would duplicate them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ct_tune.search._space import initial_trials
from ct_tune.tracking.keys import ATTR_KIND, ATTR_RUN_ID, TAG_STATE, TAG_TRIAL

if TYPE_CHECKING:
    from ct_tune.search._study import Study

__all__ = ["close_orphan_runs", "requeue_initial_trials"]


def requeue_initial_trials(study: Study) -> int:
    """Enqueue again the baseline / paper-grid trials that ended FAIL (a crash, a Ctrl-C), so that the
    ReLU baseline is always part of the study. Returns how many were enqueued."""
    from optuna.trial import TrialState

    alive = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    present = [
        t.system_attrs.get("fixed_params", t.params)
        for t in study.optuna_study.get_trials(deepcopy=False, states=alive)
    ]
    added = 0
    for params, kind in initial_trials(study.spec, study.units, study.families):
        if not any(_same_params(params, other) for other in present):
            study.optuna_study.enqueue_trial(params, user_attrs={ATTR_KIND: kind})
            present.append(params)
            added += 1
    return added


def close_orphan_runs(study: Study) -> int:
    """Close the MLflow runs left RUNNING by workers that stopped between Optuna's tell and MLflow (killed,
    or the MLflow store was unreachable), so that MLflow follows Optuna: a run whose trial has ended takes
    the trial's state (and its values, when it completed). A run whose trial is still RUNNING is left alone
    unless the trial names another run: its worker may be alive, on another launch. Returns how many were
    closed."""
    from optuna.trial import TrialState

    tracker = study.tracker
    experiment = study.mlflow.get("experiment_id")
    if experiment is None:
        return 0
    # Two searches, as MLflow's filters have no OR: a run tagged RUNNING, and a trial run whose state tag
    # was written but whose status was not (the store stopped between the two calls that finish a run).
    # The second leaves out the study's parent run and any other run that is not a trial's.
    runs = {run.info.run_id: run for run in tracker.runs(experiment, filter_string=f"tags.`{TAG_STATE}` = 'RUNNING'")}
    for run in tracker.runs(experiment, filter_string="attributes.status = 'RUNNING'"):
        if TAG_TRIAL in run.data.tags:
            runs.setdefault(run.info.run_id, run)
    if not runs:
        return 0
    trials = {t.number: t for t in study.optuna_study.get_trials(deepcopy=False)}
    closed = 0
    for run in runs.values():
        trial = trials.get(int(run.data.tags.get(TAG_TRIAL, -1)))
        named = None if trial is None else trial.user_attrs.get(ATTR_RUN_ID)
        running = trial is not None and trial.state in (TrialState.RUNNING, TrialState.WAITING)
        if running and named in (None, run.info.run_id):
            continue
        adopted = trial is not None and named == run.info.run_id  # the run the trial names as its own
        if adopted and run.data.tags.get(TAG_STATE) == trial.state.name:
            tracker.close_run(run.info.run_id, state=trial.state.name)  # its values are logged: only the status
        elif adopted and trial.state != TrialState.FAIL:
            values = dict(zip(study.objective_names, trial.values or (), strict=False))
            tracker.close_run(run.info.run_id, state=trial.state.name, metrics=values)
        else:
            tracker.close_run(run.info.run_id, state="FAIL", reason="its worker stopped before closing it")
        closed += 1
    return closed


def _same_params(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(abs(float(a[k]) - float(b[k])) < 1e-12 for k in a)
