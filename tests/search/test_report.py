"""``Study.report`` on a tiny finished study: rows for the chosen trials and the baseline, scored on the test
split, stored on the study and logged to MLflow."""

from __future__ import annotations

import json
from pathlib import Path

from ct_tune import InputError
from ct_tune.search._bench import Bench
from ct_tune.tracking._keys import ATTR_REPORT

import pytest

from tests._fresh import tiny_study

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(tmp_path_factory, digits_checkpoint):
    study = tiny_study(
        tmp_path_factory.mktemp("report"),
        digits_checkpoint,
        search={"granularity": "stage", "beta": {"low": 0.5, "high": 1.0}, "enqueue_baseline": True},
        objectives=["accuracy", {"name": "adversarial", "eps": 0.05, "steps": 2, "n": 64}],
        sampler={"name": "random", "seed": 1},
        budget={"n_trials": 3},
    )
    study.run(progress=False)
    return study


def scored_on_test(study, numbers):
    """The test-split values of these trials, scored independently of the report."""
    with Bench.open(study.spec, device="cpu") as bench:
        evaluator = bench.evaluator("test")
        values = {}
        for number in numbers:
            trial = study.trial(number)
            bench.handle.update(trial.betas, c=trial.c)
            values[number] = {name: result.value for name, result in evaluator.evaluate().items()}
    return values


def test_report_of_the_pareto_front_and_the_baseline(finished):
    best = finished.best()
    assert best  # two objectives: the Pareto front, one trial or more
    report = finished.report()
    baseline = finished.baseline()
    assert report.study == finished.name and report.test_samples == 359
    numbers = [row["number"] for row in report.trials]
    assert numbers == [t.number for t in best] + [baseline.number]
    assert [row["is_baseline"] for row in report.trials] == [False] * len(best) + [True]
    expected = scored_on_test(finished, set(numbers))
    for row in report.trials:
        trial = finished.trial(row["number"])
        assert row["test"] == pytest.approx(expected[row["number"]])
        assert row["val"] == trial.values and row["betas"] == trial.betas and row["c"] == trial.c
        assert set(row["test_details"]) == {"accuracy", "adversarial"}
        assert "per_class" in row["test_details"]["accuracy"]
    json.dumps(report.to_dict())

    stored = finished.optuna_study.user_attrs[ATTR_REPORT]
    assert set(stored) == {str(n) for n in numbers}
    assert all(stored[str(n)]["test"] == pytest.approx(expected[n]) for n in numbers)
    assert finished.trial(numbers[0]).test == pytest.approx(expected[numbers[0]])

    client = finished.tracker.client
    for row in report.trials:  # each reported trial's own run holds its test values
        run = client.get_run(finished.trial(row["number"]).mlflow_run_id)
        assert run.data.metrics["test.accuracy"] == pytest.approx(row["test"]["accuracy"])
        assert run.data.metrics["test.adversarial"] == pytest.approx(row["test"]["adversarial"])
    parent = client.get_run(finished.parent_run_id)
    assert parent.data.metrics["test.baseline.accuracy"] == pytest.approx(report.trials[-1]["test"]["accuracy"])
    if len(best) > 1:  # several Pareto-optimal trials: no single test.<objective> on the parent
        assert "test.accuracy" not in parent.data.metrics
    logged = json.loads(Path(client.download_artifacts(finished.parent_run_id, "report.json")).read_text())
    assert logged["trials"][0]["number"] == numbers[0] and logged["test_samples"] == 359


def test_report_of_chosen_trials(finished):
    chosen = [t.number for t in finished.optuna_study.trials if t.state.name == "COMPLETE"][-1]
    report = finished.report(trials=[chosen])
    rows = report.trials
    assert rows[0]["number"] == chosen and rows[-1]["is_baseline"]
    if chosen == finished.baseline().number:  # chosen and baseline: scored once, listed twice
        assert rows[0]["test"] == rows[1]["test"]
    parent = finished.tracker.client.get_run(finished.parent_run_id)
    assert parent.data.metrics["test.accuracy"] == pytest.approx(rows[0]["test"]["accuracy"])  # one trial: on top
    assert str(chosen) in finished.optuna_study.user_attrs[ATTR_REPORT]
    with pytest.raises(InputError):
        finished.report(trials=[999])


def test_report_before_any_completed_trial(tmp_path, digits_checkpoint):
    study = tiny_study(tmp_path, digits_checkpoint, name="empty")
    with pytest.raises(InputError, match="has no completed trial yet; run it with 'ct-tune study run empty'"):
        study.report()
