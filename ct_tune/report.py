"""The final report: the chosen trials scored once on the test split (nothing else reads it).

The best trial (or each Pareto-optimal trial) and the ReLU baseline are evaluated on the test split
with the study's objectives. Results go to the study (user attribute ``ct_tune.report``, since Optuna
freezes finished trials), to each trial's MLflow run and to the parent run (``test.*`` metrics and a
``report.json`` artifact).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from ct_tune._errors import InputError
from ct_tune.session import Session
from ct_tune.study import StudyInfo, baseline_trial, best_trials, choose_trial
from ct_tune.tracking import ATTR_RUN_ID, Tracker

ATTR_REPORT = "ct_tune.report"


def report_study(
    info: StudyInfo, tracker: Tracker, *, trial_numbers: Sequence[int] | None = None, device: str | None = None
) -> dict[str, Any]:
    """Rows for the chosen trials (best, or Pareto front, or given numbers), then one for the ReLU
    baseline, each scored on the test split; a trial that is both is evaluated once."""
    trials = [choose_trial(info, n) for n in trial_numbers] if trial_numbers else best_trials(info)
    if not trials:
        raise InputError(f"study {info.name!r} has no completed trial yet; run it with 'ct-tune study run {info.name}'")
    baseline = baseline_trial(info)
    listed = [(trial, False) for trial in trials] + ([(baseline, True)] if baseline is not None else [])
    session = Session.open(info.spec, device=device)
    try:
        expected = info.meta.get("fingerprint")
        if expected and session.trace.fingerprint != expected:
            raise InputError(f"the model differs from the one study {info.name!r} was created with; cannot report")
        evaluator = session.evaluator("test")
        scored: dict[int, Any] = {}
        rows = []
        for trial, is_baseline in listed:
            betas, c = info.profile_of(trial)
            if trial.number not in scored:
                session.handle.update(betas, c=c)
                scored[trial.number] = evaluator.evaluate()
                run_id = trial.user_attrs.get(ATTR_RUN_ID)
                if run_id:
                    metrics = {f"test.{name}": r.value for name, r in scored[trial.number].items()}
                    tracker.log(run_id, metrics=metrics)
            results = scored[trial.number]
            rows.append(
                {
                    "number": trial.number,
                    "is_baseline": is_baseline,
                    "val": dict(zip(info.objective_names, trial.values, strict=True)),
                    "test": {name: result.value for name, result in results.items()},
                    "test_details": {name: result.details for name, result in results.items()},
                    "betas": betas,
                    "c": c,
                }
            )
    finally:
        session.close()
    report = {
        "study": info.name,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "test_samples": len(evaluator.data.val_y),
        "trials": rows,
    }
    stored = dict(info.study.user_attrs.get(ATTR_REPORT, {}))
    stored.update({str(row["number"]): {"test": row["test"], "created": report["created"]} for row in rows})
    info.study.set_user_attr(ATTR_REPORT, stored)
    parent = info.mlflow["parent_run_id"]
    chosen = [row for row in rows if not row["is_baseline"]] or rows
    metrics = {f"test.{name}": value for name, value in chosen[0]["test"].items()} if len(chosen) == 1 else {}
    for row in rows:
        if row["is_baseline"]:
            metrics.update({f"test.baseline.{name}": value for name, value in row["test"].items()})
    tracker.log(parent, metrics=metrics)
    tracker.client.log_dict(parent, report, "report.json")
    return report
