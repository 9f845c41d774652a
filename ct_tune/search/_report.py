"""The final report: the chosen trials scored once on the test split (nothing else reads it), with how sure.

The best trial (or each Pareto-optimal trial), the ReLU baseline and the best global profile (the best trial
whose betas are all equal, the paper's kind of profile) are evaluated on the test split with the study's
objectives. Each test value comes with a bootstrap interval over test samples, and each reported profile is
compared on the same samples with the baseline and with the best global profile (paired interval of the
difference, exact McNemar p-value; see ``ct_tune.evidence``), next to its val-test gap (a large one is val overfit).
Results go to the study (user attribute ``ct_tune.report``, since Optuna freezes finished trials), to each
trial's MLflow run and to the parent run (``test.*`` metrics, the test split as a dataset and a ``report.json``
artifact).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ct_tune._errors import InputError
from ct_tune.data import UserData
from ct_tune.evidence import (
    BASELINE,
    CHOSEN,
    GLOBAL,
    Bootstrap,
    Reference,
    ReportRow,
    correctness,
    rank_on_resamples,
    score_row,
)
from ct_tune.tracking import SplitDataset, split_datasets
from ct_tune.tracking.keys import ATTR_REPORT, ATTR_TEST_FINGERPRINT
from ct_tune.workers import InterruptGuard

if TYPE_CHECKING:
    from ct_tune.bench import Bench
    from ct_tune.objectives import ObjectiveResult
    from ct_tune.search._study import Study, TrialResult

    import numpy as np

__all__ = ["StudyReport", "report_study"]

PAIRED = (
    "paired bootstrap of the difference on the same test samples; exact McNemar test "
    "(two-sided binomial on the discordant samples, scipy.stats.binomtest)"
)


@dataclass
class StudyReport:
    study: str
    created: str
    test_samples: int
    trials: list[ReportRow] = field(default_factory=list)  # the chosen trials, the best global, the baseline
    evidence: dict[str, Any] = field(default_factory=dict)  # how the intervals and tests were made
    global_reference: dict[str, Any] = field(default_factory=dict)  # which profile vs_global is against, or why none
    relu_reference: dict[str, Any] = field(default_factory=dict)  # which profile vs_relu is against, or why none
    test_digest: str = ""  # of the test labels: a paired comparison across studies needs the same samples
    reselection: dict[str, Any] | None = None  # with reselect=K: the candidates, their mean ranks, the pick and why
    correct: dict[int, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)  # per trial, per objective

    def to_dict(self) -> dict[str, Any]:
        data = {key: value for key, value in self.__dict__.items() if key != "correct"}
        data["trials"] = [row.to_dict() for row in self.trials]
        return data

    def trials_by_number(self, number: int) -> ReportRow:
        """The first row of trial ``number``."""
        return next(row for row in self.trials if row.number == number)

    def reference(self, label: str, *, role: str = CHOSEN) -> Reference | None:
        """The first row of ``role`` (the best trial, or ``"baseline"``) as a reference for other studies on the
        same test split."""
        rows = [row for row in self.trials if row.role == role]
        if not rows:
            return None
        number = rows[0].number
        return Reference(label, self.study, number, rows[0].val, self.correct[number], self.test_digest)  # type: ignore[index]


@dataclass
class _Scored:
    """The profiles of a report scored once on the test split, in the order they are listed."""

    listed: list[tuple[TrialResult, str]]  # (trial, role)
    results: dict[int, Mapping[str, ObjectiveResult]]  # by trial number: each scored once
    test_samples: int
    digest: str
    reselection: dict[str, Any] | None
    datasets: list[SplitDataset]  # the test split, as the MLflow runs of the report carry it


def report_study(
    study: Study,
    *,
    trial_numbers: Sequence[int] | None = None,
    device: str | None = None,
    best_global: Reference | None = None,
    relu: Reference | None = None,
    reselect: int | None = None,
    bootstrap: Bootstrap | None = None,
) -> StudyReport:
    """Rows for the chosen trials (best, or Pareto front, or given numbers), then the best global profile and
    the ReLU baseline, each scored on the test split (a trial in several roles is evaluated once).

    ``best_global`` replaces the study's own best global profile (a pipeline passes its global stage's best),
    ``relu`` stands for the ReLU baseline of a study without one (a pipeline passes its first stage's);
    ``reselect=K`` reports, of the K best trials by val, the one that ranks best on average over bootstrap
    resamples of val (a best val value that was luck does not hold up); ``bootstrap`` sets the intervals
    (default: 95%, 4,000 resamples, seed 0)."""
    bootstrap = bootstrap or Bootstrap()
    chosen: list[TrialResult] = [study.trial(n) for n in trial_numbers] if trial_numbers else study.best()
    if not chosen:
        raise InputError(
            f"study {study.name!r} has no completed trial yet; run it with 'ct-tune study run {study.name}'"
        )
    if reselect is not None:
        _check_reselect(study, reselect, trial_numbers)
    baseline = study.baseline()
    global_trial, global_note = (None, "") if best_global is not None else _best_global(study)
    try:
        scored = _score(study, chosen, baseline, global_trial, device=device, reselect=reselect, seed=bootstrap.seed)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"study report of {study.name!r} interrupted (Ctrl-C) while scoring: nothing recorded"
        ) from None
    correct = {number: correctness(results) for number, results in scored.results.items()}

    def reference_of(trial: TrialResult | None, label: str) -> Reference | None:
        if trial is None:
            return None
        return Reference(label, study.name, trial.number, dict(trial.values), correct[trial.number], scored.digest)

    reference, global_note = _same_samples(best_global, scored.digest, global_note)
    reference = reference or reference_of(global_trial, f"best global profile of {study.name}")
    relu_ref, relu_note = _same_samples(relu, scored.digest, "")
    label = study.baseline_label
    relu_ref = reference_of(baseline, f"{label} baseline of {study.name}") or relu_ref
    if relu_ref is None:
        relu_note = relu_note or f"study {study.name} has no completed {label} baseline (enqueue_baseline adds it)"
    rows = [
        score_row(
            number=trial.number,
            role=role,
            own=(study.name, trial.number),
            val=trial.values,
            scored=scored.results[trial.number],
            betas=trial.betas,
            c=trial.c,
            relu=relu_ref,
            best_global=reference,
            bootstrap=bootstrap,
            baseline_label=study.baseline_label,
        )
        for trial, role in scored.listed
    ]
    report = StudyReport(
        study=study.name,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        test_samples=scored.test_samples,
        trials=rows,
        evidence={
            **bootstrap.to_dict(),
            "interval": "percentile bootstrap of the mean over test samples (scipy.stats.bootstrap)",
            "paired": PAIRED,
        },
        global_reference=_reference_record(reference, global_note),
        relu_reference=_reference_record(relu_ref, "" if baseline is not None else relu_note),
        test_digest=scored.digest,
        reselection=scored.reselection,
        correct=correct,
    )
    _record_whole(study, report, {trial.number: trial.mlflow_run_id for trial, _ in scored.listed}, scored.datasets)
    return report


def _reference_record(reference: Reference | None, note: str) -> dict[str, Any]:
    return {
        "study": reference.study if reference else None,
        "number": reference.number if reference else None,
        "note": note,
    }


def _score(
    study: Study,
    chosen: list[TrialResult],
    baseline: TrialResult | None,
    global_trial: TrialResult | None,
    *,
    device: str | None,
    reselect: int | None,
    seed: int,
) -> _Scored:
    """Open the bench, reselect among the best trials if asked, and score every listed trial once on test."""
    from ct_tune.bench import Bench

    with Bench.open(study.spec, **study.spec.grouping, device=device) as bench:
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
        results: dict[int, Mapping[str, ObjectiveResult]] = {}
        for trial, _ in listed:
            if trial.number not in results:
                bench.handle.update(trial.betas, c=trial.c)  # type: ignore[union-attr]
                results[trial.number] = evaluator.evaluate()
        labels = evaluator.data.val_y
        digest = hashlib.sha256(labels.cpu().numpy().tobytes()).hexdigest()[:16]
        datasets = split_datasets(bench.data.describe(), ["test"])
        return _Scored(listed, results, len(labels), digest, reselection, datasets)


def _best_global(study: Study) -> tuple[TrialResult | None, str]:
    """The paper's pick: of the completed trials with one beta for every unit (the ReLU baseline included, as
    the paper includes it), the best by val on the first objective; none when the baseline is the only one."""
    name, direction = study.objective_names[0], study.directions[0]
    own = study.baseline_betas
    candidates = [t for t in study.trials() if name in t.values and _global(t.betas, own)]
    if all(t.betas == own for t in candidates):
        if study.baseline_label == "ReLU":
            return None, "no completed trial with one beta below 1 for every unit (enqueue_paper_grid adds them)"
        return (
            None,
            "no completed trial with one beta per family other than the baseline (enqueue_paper_grid adds them)",
        )
    sign = 1 if direction == "maximize" else -1
    best = max(candidates, key=lambda t: (sign * t.values[name], -t.number))
    relu = ""
    if best.betas == own:
        other = "no beta below 1" if study.baseline_label == "ReLU" else "no other global beta"
        relu = f" (the {study.baseline_label} baseline: {other} did better on val)"
    return best, f"best global profile of {study.name} by val {name} (trial {best.number}){relu}"


def _global(betas: Mapping[str, float], own: Mapping[str, float]) -> bool:
    """One beta for every unit (the paper's global profile); a network mixing families: one per family
    (the paper grid's trials, and the network's own activation)."""
    by_family: dict[float, set[float]] = {}
    for unit, beta in betas.items():
        by_family.setdefault(own[unit], set()).add(beta)
    return all(len(values) == 1 for values in by_family.values())


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


def _same_samples(given: Reference | None, digest: str, note: str) -> tuple[Reference | None, str]:
    """A reference from another study, if it was scored on these test samples (else a note saying so)."""
    if given is None:
        return None, note
    if given.test_digest != digest:
        return None, f"{given.label} was scored on other test samples: not compared"
    return given, f"{given.label} (trial {given.number})"


def _record_whole(
    study: Study, report: StudyReport, run_ids: Mapping[int, str | None], datasets: Sequence[SplitDataset]
) -> None:
    """``_record`` with Ctrl-C (and SIGTERM) held until it is done: the trial runs, the study's attribute,
    the parent run and ``report.json`` are written together (about a second); a second Ctrl-C still stops
    it at once, and says the record may be partial."""
    guard, recorded = InterruptGuard(), False
    try:
        with guard.installed(), guard.deferred():
            _record(study, report, run_ids, datasets)
            recorded = True
    except KeyboardInterrupt:
        if recorded:
            raise KeyboardInterrupt(
                f"study report of {study.name!r} interrupted (Ctrl-C) after its results were recorded in both stores"
            ) from None
        raise KeyboardInterrupt(
            f"study report of {study.name!r} stopped by a second Ctrl-C while recording: the record may be partial; "
            "run the report again"
        ) from None


def _record(
    study: Study, report: StudyReport, run_ids: Mapping[int, str | None], datasets: Sequence[SplitDataset]
) -> None:
    """The report on the study (its test values), on each trial's MLflow run and on the parent run, each run
    with the test split as a dataset."""
    tracker = study.tracker
    rows = report.trials
    logged: set[int | str] = set()
    for row in rows:  # a trial in several roles: its first row (chosen before baseline)
        run_id = run_ids.get(row.number)  # type: ignore[arg-type]
        if run_id and row.number not in logged:
            tracker.log(run_id, metrics=row.metrics())
            tracker.log_datasets(run_id, datasets)
            logged.add(row.number)
    stored = dict(study.optuna_study.user_attrs.get(ATTR_REPORT, {}))
    for row in rows:
        stored[str(row.number)] = {"test": row.test, "test_ci": row.to_dict()["test_ci"], "created": report.created}
    study.optuna_study.set_user_attr(ATTR_REPORT, stored)
    chosen = [row for row in rows if row.role == CHOSEN]
    metrics = chosen[0].metrics() if len(chosen) == 1 else {}
    for row in rows:
        if row.role == BASELINE:
            metrics.update(row.metrics("test.baseline"))
        elif row.role == GLOBAL:
            metrics.update(row.metrics("test.global"))
    tracker.log(study.parent_run_id, metrics=metrics)
    tracker.log_datasets(study.parent_run_id, datasets)
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
