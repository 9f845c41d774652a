"""``Study.report`` on a tiny finished study: rows for the chosen trials and the baseline, scored on the test
split, stored on the study and logged to MLflow."""

from __future__ import annotations

import json
from pathlib import Path

from ct_tune import InputError
from ct_tune.bench import Bench
from ct_tune.evidence import mcnemar
from ct_tune.search._space import uniform_params
from ct_tune.tracking.keys import ATTR_KIND, ATTR_REPORT

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
        budget={"n_trials": 4},
    )
    # one global profile (every unit 0.8), as the paper's grid enqueues them: the report's "best global"
    global_params = uniform_params(0.8, study.spec, study.units)
    study.optuna_study.enqueue_trial(global_params, user_attrs={ATTR_KIND: "paper-grid"})
    study.run(progress=False)
    return study


def scored_on_test(study, numbers, *, per_sample=False):
    """The test-split values of these trials (or their 1/0 per test sample), scored independently of the
    report."""
    with Bench.open(study.spec, **study.spec.grouping, device="cpu") as bench:
        evaluator = bench.evaluator("test")
        values = {}
        for number in numbers:
            trial = study.trial(number)
            bench.handle.update(trial.betas, c=trial.c)
            results = evaluator.evaluate().items()
            for result in dict(results).values():  # the per-sample vector is what the value is the mean of
                assert float(result.correct.float().mean()) == pytest.approx(result.value)
            if per_sample:
                values[number] = {name: result.correct.numpy() for name, result in results}
            else:
                values[number] = {name: result.value for name, result in results}
    return values


def rows_of(report) -> list[dict]:
    """The report's rows as ``--json`` and ``report.json`` hold them."""
    return json.loads(json.dumps(report.to_dict()))["trials"]


def test_report_of_the_pareto_front_and_the_baseline(finished):
    best = finished.best()
    assert best  # two objectives: the Pareto front, one trial or more
    report = finished.report()
    rows = rows_of(report)
    assert [row.number for row in report.trials] == [row["number"] for row in rows]
    baseline = finished.baseline()
    assert report.study == finished.name and report.test_samples == 359
    numbers = [row["number"] for row in rows]
    glob = [row["number"] for row in rows if row["role"] == "best global"]
    assert numbers == [t.number for t in best] + glob + [baseline.number]
    assert [row["is_baseline"] for row in rows] == [False] * (len(best) + len(glob)) + [True]
    expected = scored_on_test(finished, set(numbers))
    for row in rows:
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
    for row in rows:  # each reported trial's own run holds its test values
        run = client.get_run(finished.trial(row["number"]).mlflow_run_id)
        assert run.data.metrics["test.accuracy"] == pytest.approx(row["test"]["accuracy"])
        assert run.data.metrics["test.adversarial"] == pytest.approx(row["test"]["adversarial"])
    parent = client.get_run(finished.parent_run_id)
    assert parent.data.metrics["test.baseline.accuracy"] == pytest.approx(rows[-1]["test"]["accuracy"])
    if len(best) > 1:  # several Pareto-optimal trials: no single test.<objective> on the parent
        assert "test.accuracy" not in parent.data.metrics
    logged = json.loads(Path(client.download_artifacts(finished.parent_run_id, "report.json")).read_text())
    assert logged["trials"][0]["number"] == numbers[0] and logged["test_samples"] == 359


def test_report_of_chosen_trials(finished):
    chosen = [t.number for t in finished.optuna_study.trials if t.state.name == "COMPLETE"][-1]
    report = finished.report(trials=[chosen])
    rows = rows_of(report)
    assert rows[0]["number"] == chosen and rows[0]["role"] == "chosen" and rows[-1]["role"] == "baseline"
    if chosen == finished.baseline().number:  # chosen and baseline: scored once, listed twice
        assert rows[0]["test"] == rows[-1]["test"]
    parent = finished.tracker.client.get_run(finished.parent_run_id)
    assert parent.data.metrics["test.accuracy"] == pytest.approx(rows[0]["test"]["accuracy"])  # one trial: on top
    assert str(chosen) in finished.optuna_study.user_attrs[ATTR_REPORT]
    with pytest.raises(InputError):
        finished.report(trials=[999])


def test_report_before_any_completed_trial(tmp_path, digits_checkpoint):
    study = tiny_study(tmp_path, digits_checkpoint, name="empty")
    with pytest.raises(InputError, match="has no completed trial yet; run it with 'ct-tune study run empty'"):
        study.report()


def test_report_says_how_sure_it_is(finished, cli_fast):
    """Every value has its interval, every profile its paired comparisons on the same test samples (checked
    against McNemar on vectors scored apart from the report), in the report, MLflow, the table and --json."""
    report = finished.report()
    rows = rows_of(report)
    by_number = {row["number"]: row for row in reversed(rows)}  # a trial's first row
    (grid,) = [t for t in finished.trials() if t.kind == "paper-grid"]
    relu = finished.baseline()
    baseline = relu.number
    # the paper's pick among the global profiles (the baseline included), ties to the earlier trial
    glob = max((relu, grid), key=lambda t: (t.values["accuracy"], -t.number)).number
    assert report.global_reference["number"] == glob
    roles = {row["number"]: row["role"] for row in rows}
    if glob == baseline:  # the baseline row stands for it
        assert roles[glob] == "baseline" and "best global" not in roles.values()
    else:  # a row of its own, unless it is a best trial
        assert roles[glob] in ("chosen", "best global")
    vectors = scored_on_test(finished, {row["number"] for row in rows}, per_sample=True)
    n = {"accuracy": 359, "adversarial": 64}
    for row in rows:
        for name in n:
            ci, value = row["test_ci"][name], row["test"][name]
            assert ci["low"] <= value <= ci["high"] and ci["n"] == n[name]
            assert ci["high"] - ci["low"] > 0 or value in (0.0, 1.0)
            assert row["val_test_gap"][name] == pytest.approx(row["val"][name] - value)
            for key, other in (("vs_relu", baseline), ("vs_global", glob)):
                if row["number"] == other or (key == "vs_global" and row["role"] == "baseline"):
                    assert row[key] is None  # not against itself; the baseline is what others are compared with
                    continue
                found = row[key][name]
                theirs = by_number[other]
                assert found["val_diff"] == pytest.approx(row["val"][name] - theirs["val"][name])
                expected = value - by_number[other]["test"][name]  # float32 means: 1e-6
                assert found["diff"] == pytest.approx(expected, abs=1e-6)
                assert found["ci_low"] <= found["diff"] <= found["ci_high"]
                assert found["p_value"] == pytest.approx(
                    mcnemar(a=vectors[row["number"]][name], b=vectors[other][name])
                )
                assert found["within_noise"] == (found["ci_low"] <= 0 <= found["ci_high"] or found["p_value"] >= 0.05)
    assert report.evidence["resamples"] == 4000 and report.evidence["seed"] == 0
    assert report.evidence["confidence"] == 0.95

    client = finished.tracker.client
    parent = client.get_run(finished.parent_run_id).data.metrics
    baseline_row = by_number[baseline]
    assert parent["test.baseline.accuracy.ci_low"] == pytest.approx(baseline_row["test_ci"]["accuracy"]["low"])
    global_row = by_number[glob]
    if global_row["role"] == "best global":  # not one of the best trials itself
        logged = parent["test.global.adversarial.vs_relu.p_value"]
        assert logged == pytest.approx(global_row["vs_relu"]["adversarial"]["p_value"])
    for row in rows:
        if row["role"] == "chosen":
            run = client.get_run(finished.trial(row["number"]).mlflow_run_id).data.metrics
            assert run["test.accuracy.ci_high"] == pytest.approx(row["test_ci"]["accuracy"]["high"])
            if row["vs_relu"]:
                assert run["test.accuracy.vs_relu.diff"] == pytest.approx(row["vs_relu"]["accuracy"]["diff"])

    stores = ("--storage", finished.storage_url, "--tracking-uri", finished.tracking_uri)
    shown = cli_fast("study", "report", finished.name, *stores)
    assert shown.returncode == 0, shown.stderr
    assert "intervals: 95% percentile bootstrap over test samples (4000 resamples, seed 0)" in shown.stdout
    assert f"best global: best global profile of {finished.name} by val accuracy (trial {glob})" in shown.stdout
    assert "paired comparisons on the same test samples" in shown.stdout
    differences = [found for row in rows for key in ("vs_relu", "vs_global") for found in (row[key] or {}).values()]
    within = sum(found["within_noise"] for found in differences)
    said = f"{within} of {len(differences)} differences are within noise" if within else "differences are real at 95%"
    assert said in shown.stdout
    payload = json.loads(json.dumps(report.to_dict()))  # what --json prints
    assert payload["evidence"]["resamples"] == 4000 and "correct" not in payload
    assert payload["trials"][0]["test_ci"]["accuracy"]["n"] == 359
    refused = cli_fast("study", "report", finished.name, *stores, "--reselect", "3")  # two objectives
    assert refused.returncode == 2 and "--reselect ranks one maximised objective" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_reselect_reports_the_candidate_that_holds_up_on_val_resamples(tmp_path, digits_checkpoint):
    study = tiny_study(
        tmp_path,
        digits_checkpoint,
        search={"granularity": "stage", "beta": {"low": 0.6, "high": 1.0}, "enqueue_baseline": True},
        sampler={"name": "random", "seed": 2},
        budget={"n_trials": 5},
    )
    study.run(progress=False)
    report = study.report(reselect=3)
    chosen = report.reselection
    by_val = sorted(study.trials(), key=lambda t: (-t.values["accuracy"], t.number))[:3]
    assert [c["number"] for c in chosen["candidates"]] == [t.number for t in by_val]
    assert [c["val"] for c in chosen["candidates"]] == [t.values["accuracy"] for t in by_val]
    assert sum(c["mean_rank"] for c in chosen["candidates"]) == pytest.approx(6.0)
    best_rank = min(c["mean_rank"] for c in chosen["candidates"])
    picked = next(c for c in chosen["candidates"] if c["number"] == chosen["picked"])
    assert picked["mean_rank"] == best_rank and chosen["resamples"] == 200
    assert report.trials[0].number == chosen["picked"] and report.trials[0].role == "chosen"
    assert "trial" in chosen["why"] and "bootstrap resamples of val" in chosen["why"]
    with pytest.raises(InputError, match="not both"):
        study.report(reselect=2, trials=[0])
    with pytest.raises(InputError, match="K >= 2"):
        study.report(reselect=1)
