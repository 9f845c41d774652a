"""The final report: the chosen trials scored once on the test split (nothing else reads it).

The best trial (or each Pareto-optimal trial) and the ReLU baseline are evaluated on the test split with
the study's objectives. Results go to the study (user attribute ``ct_tune.report``, since Optuna freezes
finished trials), to each trial's MLflow run and to the parent run (``test.*`` metrics and a
``report.json`` artifact).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ct_tune._errors import InputError
from ct_tune.data._user import UserData
from ct_tune.tracking._keys import ATTR_REPORT, ATTR_TEST_FINGERPRINT

if TYPE_CHECKING:
    from ct_tune.search._bench import Bench
    from ct_tune.search._study import Study, TrialResult

__all__ = ["StudyReport", "report_study"]


@dataclass
class StudyReport:
    study: str
    created: str
    test_samples: int
    # one row per reported trial: number, is_baseline, val / test values by objective, test details, betas, c
    trials: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def report_study(study: Study, *, trial_numbers: Sequence[int] | None = None, device: str | None = None) -> StudyReport:
    """Rows for the chosen trials (best, or Pareto front, or given numbers), then one for the ReLU baseline,
    each scored on the test split; a trial that is both is evaluated once."""
    from ct_tune.search._bench import Bench

    chosen: list[TrialResult] = [study.trial(n) for n in trial_numbers] if trial_numbers else study.best()
    if not chosen:
        raise InputError(
            f"study {study.name!r} has no completed trial yet; run it with 'ct-tune study run {study.name}'"
        )
    tracker = study.tracker
    baseline = study.baseline()
    listed = [(trial, False) for trial in chosen] + ([(baseline, True)] if baseline is not None else [])
    with Bench.open(study.spec, device=device) as bench:
        bench.check_identity(study.meta, study.name)
        evaluator = bench.evaluator("test")
        _check_test_split(study, bench)
        scored: dict[int, Any] = {}
        rows = []
        for trial, is_baseline in listed:
            if trial.number not in scored:
                bench.handle.update(trial.betas, c=trial.c)  # type: ignore[union-attr]
                scored[trial.number] = evaluator.evaluate()
                if trial.mlflow_run_id:
                    metrics = {f"test.{name}": r.value for name, r in scored[trial.number].items()}
                    tracker.log(trial.mlflow_run_id, metrics=metrics)
            results = scored[trial.number]
            rows.append(
                {
                    "number": trial.number,
                    "is_baseline": is_baseline,
                    "val": dict(trial.values),
                    "test": {name: result.value for name, result in results.items()},
                    "test_details": {name: result.details for name, result in results.items()},
                    "betas": trial.betas,
                    "c": trial.c,
                }
            )
        test_samples = len(evaluator.data.val_y)
    report = StudyReport(
        study=study.name,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        test_samples=test_samples,
        trials=rows,
    )
    stored = dict(study.optuna_study.user_attrs.get(ATTR_REPORT, {}))
    stored.update({str(row["number"]): {"test": row["test"], "created": report.created} for row in rows})
    study.optuna_study.set_user_attr(ATTR_REPORT, stored)
    reported = [row for row in rows if not row["is_baseline"]] or rows
    metrics = {f"test.{name}": value for name, value in reported[0]["test"].items()} if len(reported) == 1 else {}
    for row in rows:
        if row["is_baseline"]:
            metrics.update({f"test.baseline.{name}": value for name, value in row["test"].items()})
    tracker.log(study.parent_run_id, metrics=metrics)
    tracker.client.log_dict(study.parent_run_id, report.to_dict(), "report.json")
    return report


def _check_test_split(study: Study, bench: Bench) -> None:
    """The user's test split is read only here, so it is fingerprinted here: at the first report, and every
    later report must read the same samples (a built-in split's fingerprint already covers its test part)."""
    if not isinstance(bench.data, UserData):
        return
    found = bench.data.fingerprints["test"]
    recorded = study.optuna_study.user_attrs.get(ATTR_TEST_FINGERPRINT)
    if recorded is None:
        study.optuna_study.set_user_attr(ATTR_TEST_FINGERPRINT, found)
    elif recorded != found:
        raise InputError(
            f"the test split differs from the one study {study.name!r} was first reported on ({recorded}, now "
            f"{found}); report on the same test data, or create a new study"
        )
