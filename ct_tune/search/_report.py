"""The final report: the chosen trials scored once on the test split (nothing else reads it), with how sure.

The best trial (or each Pareto-optimal trial), the ReLU baseline and the best global profile (the best trial
whose betas are all equal, the paper's kind of profile) are evaluated on the test split with the study's
objectives. Each test value comes with a bootstrap interval over test samples, and each reported profile is
compared on the same samples with the baseline and with the best global profile (paired interval of the
difference, exact McNemar p-value; see ``_evidence``), next to its val-test gap (a large one is val overfit).
Results go to the study (user attribute ``ct_tune.report``, since Optuna freezes finished trials), to each
trial's MLflow run and to the parent run (``test.*`` metrics and a ``report.json`` artifact).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ct_tune._errors import InputError
from ct_tune.data._user import UserData
from ct_tune.search._evidence import (
    CONFIDENCE,
    RESAMPLES,
    SEED,
    Interval,
    bootstrap_mean,
    compare,
    rank_on_resamples,
)
from ct_tune.tracking._keys import ATTR_REPORT, ATTR_TEST_FINGERPRINT

if TYPE_CHECKING:
    from ct_tune.search._bench import Bench
    from ct_tune.search._study import Study, TrialResult

    import numpy as np

__all__ = ["Reference", "StudyReport", "interval_bounds", "report_study", "versus"]

BASELINE, CHOSEN, GLOBAL = "baseline", "chosen", "best global"


@dataclass
class Reference:
    """A profile scored on the test split that others are compared with (the ReLU baseline, the best global
    profile): what it is (``label``, its study and trial), its val values, its correctness vectors by
    objective, and a digest of the test labels they were scored on."""

    label: str
    study: str
    number: int
    val: dict[str, float]
    correct: dict[str, np.ndarray]
    test_digest: str


@dataclass
class StudyReport:
    study: str
    created: str
    test_samples: int
    # one row per reported trial: number, role (chosen / baseline / best global), is_baseline, val / test
    # values by objective, test_ci, vs_relu, vs_global, val_test_gap, test details, betas, c
    trials: list[dict[str, Any]] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)  # how the intervals and tests were made
    global_reference: dict[str, Any] = field(default_factory=dict)  # which profile vs_global is against, or why none
    relu_reference: dict[str, Any] = field(default_factory=dict)  # which profile vs_relu is against, or why none
    test_digest: str = ""  # of the test labels: a paired comparison across studies needs the same samples
    reselection: dict[str, Any] | None = None  # with reselect=K: the candidates, their mean ranks, the pick and why
    correct: dict[int, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)  # per trial, per objective

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "correct"}

    def trials_by_number(self, number: int) -> dict[str, Any]:
        """The first row of trial ``number``."""
        return next(row for row in self.trials if row["number"] == number)

    def reference(self, label: str, *, role: str = CHOSEN) -> Reference | None:
        """The first row of ``role`` (the best trial, or ``"baseline"``) as a reference for other studies on the
        same test split."""
        rows = [row for row in self.trials if row["role"] == role]
        if not rows:
            return None
        number = rows[0]["number"]
        return Reference(label, self.study, number, rows[0]["val"], self.correct[number], self.test_digest)


def report_study(
    study: Study,
    *,
    trial_numbers: Sequence[int] | None = None,
    device: str | None = None,
    best_global: Reference | None = None,
    relu: Reference | None = None,
    reselect: int | None = None,
    seed: int = SEED,
    resamples: int = RESAMPLES,
) -> StudyReport:
    """Rows for the chosen trials (best, or Pareto front, or given numbers), then the best global profile and
    the ReLU baseline, each scored on the test split (a trial in several roles is evaluated once).

    ``best_global`` replaces the study's own best global profile (a pipeline passes its global stage's best),
    ``relu`` stands for the ReLU baseline of a study without one (a pipeline passes its first stage's);
    ``reselect=K`` reports, of the K best trials by val, the one that ranks best on average over bootstrap
    resamples of val (a best val value that was luck does not hold up); ``seed`` / ``resamples`` set the
    bootstrap."""
    from ct_tune.search._bench import Bench

    chosen: list[TrialResult] = [study.trial(n) for n in trial_numbers] if trial_numbers else study.best()
    if not chosen:
        raise InputError(
            f"study {study.name!r} has no completed trial yet; run it with 'ct-tune study run {study.name}'"
        )
    if reselect is not None:
        _check_reselect(study, reselect, trial_numbers)
    baseline = study.baseline()
    global_trial, global_note = (None, "") if best_global is not None else _best_global(study)
    with Bench.open(study.spec, device=device) as bench:
        bench.check_identity(study.meta, study.name)
        reselection = None
        if reselect is not None:
            picked, reselection = _reselect(study, bench, reselect, seed)
            chosen = [picked]
        listed = [(trial, CHOSEN) for trial in chosen]
        shown = {t.number for t in chosen} | ({baseline.number} if baseline is not None else set())
        if global_trial is not None and global_trial.number not in shown:
            listed.append((global_trial, GLOBAL))
        listed += [(baseline, BASELINE)] if baseline is not None else []  # last, as before there were intervals
        evaluator = bench.evaluator("test")
        _check_test_split(study, bench)
        scored: dict[int, Any] = {}
        for trial, _ in listed:
            if trial.number not in scored:
                bench.handle.update(trial.betas, c=trial.c)  # type: ignore[union-attr]
                scored[trial.number] = evaluator.evaluate()
        test_samples = len(evaluator.data.val_y)
        digest = hashlib.sha256(evaluator.data.val_y.cpu().numpy().tobytes()).hexdigest()[:16]
    correct = {
        number: {name: result.correct.cpu().numpy().astype(float) for name, result in results.items()}
        for number, results in scored.items()
    }

    def reference_of(trial: TrialResult | None, label: str) -> Reference | None:
        if trial is None:
            return None
        return Reference(label, study.name, trial.number, dict(trial.values), correct[trial.number], digest)

    reference, global_note = _same_samples(best_global, digest, global_note)
    reference = reference or reference_of(global_trial, f"best global profile of {study.name}")
    relu_ref, relu_note = _same_samples(relu, digest, "")
    relu_ref = reference_of(baseline, f"ReLU baseline of {study.name}") or relu_ref
    if relu_ref is None:
        relu_note = relu_note or f"study {study.name} has no completed ReLU baseline (enqueue_baseline adds it)"
    settings = {"confidence": CONFIDENCE, "resamples": resamples, "seed": seed}
    rows = []
    for trial, role in listed:
        results = scored[trial.number]
        mine = correct[trial.number]
        own = (study.name, trial.number)
        test = {name: result.value for name, result in results.items()}
        row: dict[str, Any] = {
            "number": trial.number,
            "role": role,
            "is_baseline": role == BASELINE,
            "val": dict(trial.values),
            "test": test,
            "test_ci": {name: interval_bounds(bootstrap_mean(scores=v, **settings)) for name, v in mine.items()},
            "vs_relu": versus(mine, relu_ref, values=trial.values, own=own, settings=settings),
            "vs_global": None
            if role == BASELINE
            else versus(mine, reference, values=trial.values, own=own, settings=settings),
            "val_test_gap": {name: trial.values[name] - test[name] for name in test if name in trial.values},
            "test_details": {name: result.details for name, result in results.items()},
            "betas": trial.betas,
            "c": trial.c,
        }
        rows.append(row)
    report = StudyReport(
        study=study.name,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        test_samples=test_samples,
        trials=rows,
        evidence={
            **settings,
            "interval": "percentile bootstrap of the mean over test samples (scipy.stats.bootstrap)",
            "paired": "paired bootstrap of the difference on the same test samples; exact McNemar test "
            "(two-sided binomial on the discordant samples, scipy.stats.binomtest)",
        },
        global_reference={
            "study": reference.study if reference else None,
            "number": reference.number if reference else None,
            "note": global_note,
        },
        relu_reference={
            "study": relu_ref.study if relu_ref else None,
            "number": relu_ref.number if relu_ref else None,
            "note": "" if baseline is not None else relu_note,
        },
        test_digest=digest,
        reselection=reselection,
        correct=correct,
    )
    _record(study, report, {trial.number: trial.mlflow_run_id for trial, _ in listed})
    return report


def _best_global(study: Study) -> tuple[TrialResult | None, str]:
    """The paper's pick: of the completed trials with one beta for every unit (the ReLU baseline included, as
    the paper includes it), the best by val on the first objective; none when the baseline is the only one."""
    name, direction = study.objective_names[0], study.directions[0]
    candidates = [t for t in study.trials() if len(set(t.betas.values())) == 1 and name in t.values]
    if all(next(iter(t.betas.values())) == 1.0 for t in candidates):
        return None, "no completed trial with one beta below 1 for every unit (enqueue_paper_grid adds them)"
    sign = 1 if direction == "maximize" else -1
    best = max(candidates, key=lambda t: (sign * t.values[name], -t.number))
    relu = (
        " (the ReLU baseline: no beta below 1 did better on val)" if best.betas[next(iter(best.betas))] == 1.0 else ""
    )
    return best, f"best global profile of {study.name} by val {name} (trial {best.number}){relu}"


def _check_reselect(study: Study, k: int, trial_numbers: Sequence[int] | None) -> None:
    if trial_numbers:
        raise InputError("--reselect picks among the best trials itself: give --reselect K or --trial N, not both")
    if k < 2:
        raise InputError(f"--reselect needs K >= 2 candidates to choose among, not {k}")
    if study.multi_objective or study.directions[0] != "maximize":
        raise InputError(
            "--reselect ranks one maximised objective; this study has "
            f"{', '.join(f'{n} ({d})' for n, d in zip(study.objective_names, study.directions, strict=True))}"
        )


def _reselect(study: Study, bench: Bench, k: int, seed: int) -> tuple[TrialResult, dict[str, Any]]:
    """Of the K best trials by val, the one with the best mean rank over bootstrap resamples of val, and why."""
    import numpy as np

    name = study.objective_names[0]
    candidates = sorted(study.trials(), key=lambda t: (-t.values[name], t.number))[:k]
    evaluator = bench.evaluator("val")
    vectors = []
    for trial in candidates:
        bench.handle.update(trial.betas, c=trial.c)  # type: ignore[union-attr]
        vectors.append(evaluator.evaluate()[name].correct.cpu().numpy())
    ranked = rank_on_resamples(correct=np.stack(vectors), seed=seed)
    picked = candidates[ranked.picked]
    top = candidates[0]
    rank = ranked.mean_rank[ranked.picked]
    if picked.number == top.number:
        why = (
            f"the best trial by val {name} holds up: the best mean rank ({rank:.2f} of {len(candidates)}) over "
            f"{ranked.resamples} bootstrap resamples of val"
        )
    elif picked.values[name] == top.values[name]:
        why = (
            f"trial {picked.number} ties the best val {name} ({top.values[name]:.4f}) and ranks best on average "
            f"({rank:.2f} of {len(candidates)}) over {ranked.resamples} bootstrap resamples of val; trial "
            f"{top.number}, first by val through its number, ranks {ranked.mean_rank[0]:.2f}"
        )
    else:
        why = (
            f"trial {picked.number} (val {name} {picked.values[name]:.4f}) ranks best on average ({rank:.2f} of "
            f"{len(candidates)}) over {ranked.resamples} bootstrap resamples of val; the best by val, trial "
            f"{top.number} ({top.values[name]:.4f}), ranks {ranked.mean_rank[0]:.2f}: its lead does not hold up"
        )
    info = {
        "objective": name,
        "k": len(candidates),
        "resamples": ranked.resamples,
        "seed": ranked.seed,
        "candidates": [
            {"number": t.number, "val": t.values[name], "mean_rank": r, "mean_value": v}
            for t, r, v in zip(candidates, ranked.mean_rank, ranked.mean_value, strict=True)
        ],
        "picked": picked.number,
        "why": why,
    }
    return picked, info


def interval_bounds(interval: Interval) -> dict[str, float]:
    """An interval as a report row holds it."""
    return {"low": interval.low, "high": interval.high, "n": interval.n}


def _same_samples(given: Reference | None, digest: str, note: str) -> tuple[Reference | None, str]:
    """A reference from another study, if it was scored on these test samples (else a note saying so)."""
    if given is None:
        return None, note
    if given.test_digest != digest:
        return None, f"{given.label} was scored on other test samples: not compared"
    return given, f"{given.label} (trial {given.number})"


def versus(
    mine: Mapping[str, np.ndarray],
    reference: Reference | None,
    *,
    values: Mapping[str, float],
    own: tuple[str, Any],
    settings: Mapping[str, Any],
) -> dict[str, dict[str, Any]] | None:
    """A profile (``own``: its study and trial number) against a reference, objective by objective (None
    against itself): the test comparison, and the val difference the search saw (``val_diff``), to set
    beside it."""
    if reference is None or (reference.study, reference.number) == own:
        return None
    found = {}
    for name in mine:
        if name in reference.correct:
            found[name] = compare(a=mine[name], b=reference.correct[name], **settings).to_dict()
            if name in values and name in reference.val:
                found[name]["val_diff"] = values[name] - reference.val[name]
    return found


def _evidence_metrics(row: Mapping[str, Any], prefix: str = "test") -> dict[str, float]:
    """A row's test values with their intervals, comparisons and val-test gap as flat MLflow metric names:
    ``test.<objective>``, ``.ci_low`` / ``.ci_high``, ``.vs_relu.diff`` / ``.ci_low`` / ``.ci_high`` /
    ``.p_value``, the same for ``.vs_global``, and ``.val_test_gap``."""
    metrics: dict[str, float] = {}
    for name, value in row["test"].items():
        key = f"{prefix}.{name}"
        metrics[key] = value
        metrics[f"{key}.ci_low"] = row["test_ci"][name]["low"]
        metrics[f"{key}.ci_high"] = row["test_ci"][name]["high"]
        for versus in ("vs_relu", "vs_global"):
            found = (row.get(versus) or {}).get(name)
            if found:
                for part in ("diff", "ci_low", "ci_high", "p_value"):
                    metrics[f"{key}.{versus}.{part}"] = found[part]
        if name in row.get("val_test_gap", {}):
            metrics[f"{key}.val_test_gap"] = row["val_test_gap"][name]
    return metrics


def _record(study: Study, report: StudyReport, run_ids: Mapping[int, str | None]) -> None:
    """The report on the study (its test values), on each trial's MLflow run and on the parent run."""
    tracker = study.tracker
    rows = report.trials
    logged: set[int] = set()
    for row in rows:  # a trial in several roles: its first row (chosen before baseline)
        run_id = run_ids.get(row["number"])
        if run_id and row["number"] not in logged:
            tracker.log(run_id, metrics=_evidence_metrics(row))
            logged.add(row["number"])
    stored = dict(study.optuna_study.user_attrs.get(ATTR_REPORT, {}))
    for row in rows:
        stored[str(row["number"])] = {"test": row["test"], "test_ci": row["test_ci"], "created": report.created}
    study.optuna_study.set_user_attr(ATTR_REPORT, stored)
    chosen = [row for row in rows if row["role"] == CHOSEN]
    metrics = _evidence_metrics(chosen[0]) if len(chosen) == 1 else {}
    for row in rows:
        if row["role"] == BASELINE:
            metrics.update(_evidence_metrics(row, "test.baseline"))
        elif row["role"] == GLOBAL:
            metrics.update(_evidence_metrics(row, "test.global"))
    tracker.log(study.parent_run_id, metrics=metrics)
    tracker.client.log_dict(study.parent_run_id, report.to_dict(), "report.json")


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
