"""Constrained studies (an objective held within a drop of the ReLU baseline's value) and the Wilcoxon pruner,
on the digits model with real SQLite stores and a real MLflow store."""

from __future__ import annotations

import ct_tune
from ct_tune.search import spec_from_dict
from ct_tune.search._constraints import Bound
from ct_tune.search._samplers import build_pruner
from ct_tune.search._space import uniform_params
from ct_tune.search._wilcoxon import ChunkWilcoxonPruner
from ct_tune.tracking.keys import ATTR_CONSTRAINT_REFERENCE, ATTR_FEASIBLE

import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.conftest import write_spec
from tests.helpers import listing

ROBUST = [{"name": "accuracy"}, {"name": "adversarial", "eps": 0.05, "steps": 2, "restarts": 1, "n": 40}]


def stores(tmp_path) -> dict[str, str]:
    return {"storage": f"sqlite:///{tmp_path}/optuna.db", "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}


def constrained(checkpoint, *, max_drop: float, beta: dict, baseline: bool, n_trials: int) -> dict:
    return {
        "model": {"checkpoint": str(checkpoint)},
        "data": {"name": "digits", "seed": 0},
        "search": {"granularity": "stage", "beta": beta, "enqueue_baseline": baseline},
        "objectives": ROBUST,
        "constraints": [{"name": "accuracy", "max_drop": max_drop}],
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 3},
        "budget": {"n_trials": n_trials},
        "run": {"device": "cpu", "batch_size": 128},
    }


def test_constrained_objectives_are_scored_but_not_optimised(digits_checkpoint):
    spec = spec_from_dict(constrained(digits_checkpoint, max_drop=0.01, beta={}, baseline=True, n_trials=4))
    assert [o.name for o in spec.objectives] == ["accuracy", "adversarial"]
    assert (spec.objective_names, spec.directions) == (["adversarial"], ["maximize"])
    with_pruner = constrained(digits_checkpoint, max_drop=0.01, beta={}, baseline=True, n_trials=4)
    pruned = spec_from_dict({**with_pruner, "pruner": {"name": "wilcoxon", "p_threshold": 0.05, "n_startup_steps": 3}})
    pruner = build_pruner(pruned)  # one optimised objective: it may prune
    assert isinstance(pruner, ChunkWilcoxonPruner)
    assert (pruner.p_threshold, pruner.n_startup_steps) == (0.05, 3)
    two = {**with_pruner, "constraints": [], "pruner": "wilcoxon"}
    with pytest.raises(ct_tune.InputError, match="pruning needs a single objective"):
        spec_from_dict(two)


def test_a_bound_is_met_within_the_drop_in_the_objective_s_direction():
    accuracy = Bound("accuracy", "maximize", reference=0.90, max_drop=0.02)
    assert accuracy.violation(0.88) == pytest.approx(0.0) and accuracy.violation(0.95) < 0 < accuracy.violation(0.87)
    loss = Bound("loss", "minimize", reference=0.30, max_drop=0.05)
    assert loss.violation(0.35) == pytest.approx(0.0) and loss.violation(0.2) < 0 < loss.violation(0.36)
    assert accuracy.describe() == "accuracy >= 0.8800 (baseline 0.9000 - 0.02)"
    assert loss.describe() == "loss <= 0.3500 (baseline 0.3000 + 0.05)"


@pytest.mark.slow
def test_constrained_robustness_study_names_the_best_feasible_profile(cli_fast, tmp_path, digits_checkpoint):
    spec = constrained(digits_checkpoint, max_drop=0.02, beta={"low": 0.5, "high": 1.0}, baseline=True, n_trials=5)
    write_spec(tmp_path / "spec.yaml", digits_checkpoint, **{k: v for k, v in spec.items() if k != "model"})
    assert cli_fast("study", "create", "spec.yaml", "--name", "robust").returncode == 0
    run = cli_fast("study", "run", "robust", "--no-progress")
    assert run.returncode == 0, run.stderr

    study = ct_tune.load_study("robust", storage=f"sqlite:///{tmp_path}/studies/optuna.db")
    trials = study.optuna_study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 5
    reference = study.optuna_study.user_attrs[ATTR_CONSTRAINT_REFERENCE]["accuracy"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    accuracy = {t.number: client.get_run(t.user_attrs["mlflow_run_id"]).data.metrics["accuracy"] for t in trials}
    assert accuracy[0] == reference  # trial 0 is the ReLU baseline: the worker's reference is its value
    for trial in trials:
        feasible = accuracy[trial.number] >= reference - 0.02
        assert trial.user_attrs[ATTR_FEASIBLE] is feasible
        assert trial.constraints["accuracy"] == pytest.approx(reference - 0.02 - accuracy[trial.number])
        run_data = client.get_run(trial.user_attrs["mlflow_run_id"]).data
        assert (
            run_data.metrics["feasible"] == float(feasible)
            and run_data.tags["ct_tune.feasible"] == str(feasible).lower()
        )
    feasible_values = {t.number: t.value for t in trials if t.user_attrs[ATTR_FEASIBLE]}
    expected = max(feasible_values, key=lambda n: (feasible_values[n], -n))

    best = cli_fast("study", "best", "robust", "--json")
    assert best.returncode == 0, best.stderr
    assert [t["number"] for t in best.json()["trials"]] == [expected]
    report = cli_fast("study", "report", "robust")
    assert report.returncode == 0, report.stderr
    assert (
        f"trial {expected} is the best feasible ({len(feasible_values)} of 5 completed trials feasible" in report.stdout
    )
    assert f"accuracy >= {reference - 0.02:.4f} (baseline {reference:.4f} - 0.02)" in report.stdout


@pytest.mark.slow
def test_a_study_without_a_feasible_trial_says_so(cli_fast, tmp_path, digits_checkpoint):
    """No baseline trial (beta 1 is outside the range): the worker scores the reference itself; betas of
    0.3-0.4 lose far more than nothing, so no trial is feasible, and best, export and report say so."""
    spec = constrained(digits_checkpoint, max_drop=0.0, beta={"low": 0.3, "high": 0.4}, baseline=False, n_trials=3)
    write_spec(tmp_path / "spec.yaml", digits_checkpoint, **{k: v for k, v in spec.items() if k != "model"})
    assert cli_fast("study", "create", "spec.yaml", "--name", "none").returncode == 0
    assert cli_fast("study", "run", "none", "--no-progress").returncode == 0
    study = ct_tune.load_study("none", storage=f"sqlite:///{tmp_path}/studies/optuna.db")
    trials = study.optuna_study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 3 and not any(t.user_attrs[ATTR_FEASIBLE] for t in trials)
    assert study.best() == []
    before = listing(tmp_path)
    for command in (("best",), ("export", "--out", "p.json"), ("report",)):
        result = cli_fast("study", command[0], "none", *command[1:])
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.strip().splitlines() == [
            f"ct-tune: error: study 'none': none of its 3 completed trials is feasible (accuracy >= "
            f"{study.optuna_study.user_attrs[ATTR_CONSTRAINT_REFERENCE]['accuracy']:.4f} (baseline "
            f"{study.optuna_study.user_attrs[ATTR_CONSTRAINT_REFERENCE]['accuracy']:.4f} - 0)); raise constraints "
            "max_drop, or search nearer beta = 1"
        ], command
    assert listing(tmp_path) == before


@pytest.mark.parametrize(
    ("constraints", "message"),
    [
        ([{"name": "probe", "max_drop": 0.01}], "constraint on 'probe', an objective this study does not score"),
        ([{"name": "accuracy", "max_drop": 1.5}], "constraints.0.max_drop"),
        ([{"name": "accuracy", "max_drop": -0.1}], "constraints.0.max_drop"),
        ([{"name": "accuracy", "max_drop": 0.1}, {"name": "adversarial", "max_drop": 0.1}], "every objective is"),
    ],
)
def test_bad_constraints_are_one_line_exit_2_and_write_nothing(
    cli_fast, tmp_path, digits_checkpoint, constraints, message
):
    write_spec(tmp_path / "bad.yaml", digits_checkpoint, objectives=ROBUST, constraints=constraints)
    before = listing(tmp_path)
    result = cli_fast("study", "create", "bad.yaml")
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert listing(tmp_path) == before


@pytest.mark.slow
def test_wilcoxon_prunes_a_clearly_worse_profile_and_keeps_an_equal_one(tmp_path, digits_checkpoint, monkeypatch):
    """The baseline first, then a profile far below it (beta 0.3 everywhere), then the baseline again: only
    the far one is pruned, and the values told to Optuna are per-chunk means (their mean is the value)."""
    monkeypatch.chdir(tmp_path)
    spec = {
        "model": {"checkpoint": str(digits_checkpoint)},
        "data": {"name": "digits", "seed": 0},
        "search": {"granularity": "stage", "beta": {"low": 0.3, "high": 1.0}, "enqueue_baseline": True},
        "objectives": ["accuracy"],
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 3},
        "pruner": {"name": "wilcoxon", "p_threshold": 0.1, "chunk": 20},
        "budget": {"n_trials": 3},
        "run": {"device": "cpu", "batch_size": 128},
    }
    study = ct_tune.create_study(spec, name="wilcoxon", **stores(tmp_path))
    for value in (0.3, 1.0):
        study.optuna_study.enqueue_trial(uniform_params(value, study.spec, study.units), skip_if_exists=False)
    study.run(progress=False)
    trials = study.optuna_study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    chunks = trials[0].intermediate_values
    steps = sorted(chunks)
    assert steps[:3] == [20, 40, 60] and len(steps) == -(-steps[-1] // 20)  # every chunk of 20 samples
    sizes = [b - a for a, b in zip([0, *steps], steps, strict=False)]
    assert sum(chunks[s] * n for s, n in zip(steps, sizes, strict=True)) / steps[-1] == pytest.approx(trials[0].value)
    assert len(trials[1].intermediate_values) < len(steps)  # stopped before the end of val
