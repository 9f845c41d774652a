"""A profile's row of a test-split report, built in one place for a study's trials and a pipeline's trained stages.

A row holds the profile's val values (what it was chosen on), its test values with a bootstrap interval
each, its paired comparisons on the same test samples with the ReLU baseline and the best global profile
(each beside the val difference the search saw), and its val-test gap (a large one is val overfit).
``score_row`` makes it from the profile's correctness vectors; ``to_dict`` is what ``--json``,
``report.json`` and the Optuna attribute hold, ``metrics`` what MLflow gets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ct_tune.evidence._stats import CONFIDENCE, RESAMPLES, SEED, Comparison, Interval, bootstrap_mean, compare

import numpy as np

if TYPE_CHECKING:
    from ct_tune.objectives import ObjectiveResult

__all__ = ["BASELINE", "CHOSEN", "GLOBAL", "Bootstrap", "Reference", "ReportRow", "Versus", "correctness", "score_row"]

CHOSEN, BASELINE, GLOBAL = "chosen", "baseline", "best global"  # a row's role


@dataclass(frozen=True)
class Bootstrap:
    """How intervals and paired tests are made (they travel with every report)."""

    confidence: float = CONFIDENCE
    resamples: int = RESAMPLES
    seed: int = SEED

    def to_dict(self) -> dict[str, Any]:
        return {"confidence": self.confidence, "resamples": self.resamples, "seed": self.seed}


@dataclass(frozen=True)
class Reference:
    """A profile scored on the test split that others are compared with (the ReLU baseline, the best global
    profile): what it is (``label``, its study and trial), its val values, its correctness vectors by
    objective, and a digest of the test labels they were scored on."""

    label: str
    study: str
    number: int | str | None
    val: Mapping[str, float]
    correct: Mapping[str, np.ndarray]
    test_digest: str


@dataclass(frozen=True)
class Versus:
    """A profile against a reference on one objective: the paired test comparison, and the val difference
    the search saw (None where the reference has no val value for it)."""

    comparison: Comparison
    val_diff: float | None = None

    def to_dict(self) -> dict[str, Any]:
        found = self.comparison.to_dict()
        if self.val_diff is not None:
            found["val_diff"] = self.val_diff
        return found


@dataclass(frozen=True)
class ReportRow:
    """One reported profile: a study's trial (``number``) or a pipeline's trained stage (``"epoch N"``)."""

    number: int | str
    role: str  # CHOSEN, BASELINE or GLOBAL
    val: dict[str, float]
    test: dict[str, float]
    test_ci: dict[str, Interval]
    vs_relu: dict[str, Versus] | None  # None: the row is the reference, or there is none
    vs_global: dict[str, Versus] | None
    val_test_gap: dict[str, float]
    test_details: dict[str, dict[str, Any]]
    betas: dict[str, float]
    c: float
    stage: str | None = None  # a pipeline's rows: the stage and its granularity
    granularity: str | None = None
    baseline_label: str = "ReLU"  # what the baseline is: "own activation" for SiLU and GELU networks

    @property
    def is_baseline(self) -> bool:
        return self.role == BASELINE

    def in_stage(self, stage: str, granularity: str) -> ReportRow:
        return replace(self, stage=stage, granularity=granularity)

    def to_dict(self) -> dict[str, Any]:
        where = {} if self.stage is None else {"stage": self.stage, "granularity": self.granularity}
        return {
            **where,
            "number": self.number,
            "role": self.role,
            "is_baseline": self.is_baseline,
            "val": self.val,
            "test": self.test,
            "test_ci": {name: {"low": ci.low, "high": ci.high, "n": ci.n} for name, ci in self.test_ci.items()},
            "vs_relu": _versus_dict(self.vs_relu),
            "vs_global": _versus_dict(self.vs_global),
            "val_test_gap": self.val_test_gap,
            "test_details": self.test_details,
            "betas": self.betas,
            "c": self.c,
            "baseline_label": self.baseline_label,
        }

    def metrics(self, prefix: str = "test") -> dict[str, float]:
        """The test values with their intervals, comparisons and val-test gap as flat MLflow metric names:
        ``test.<objective>``, ``.ci_low`` / ``.ci_high``, ``.vs_relu.diff`` / ``.ci_low`` / ``.ci_high`` /
        ``.p_value``, the same for ``.vs_global``, and ``.val_test_gap``."""
        metrics: dict[str, float] = {}
        for name, value in self.test.items():
            key = f"{prefix}.{name}"
            metrics[key] = value
            metrics[f"{key}.ci_low"], metrics[f"{key}.ci_high"] = self.test_ci[name].low, self.test_ci[name].high
            for label, against in (("vs_relu", self.vs_relu), ("vs_global", self.vs_global)):
                found = (against or {}).get(name)
                if found is not None:
                    comparison = found.comparison
                    metrics[f"{key}.{label}.diff"] = comparison.diff.estimate
                    metrics[f"{key}.{label}.ci_low"] = comparison.diff.low
                    metrics[f"{key}.{label}.ci_high"] = comparison.diff.high
                    metrics[f"{key}.{label}.p_value"] = comparison.p_value
            if name in self.val_test_gap:
                metrics[f"{key}.val_test_gap"] = self.val_test_gap[name]
        return metrics


def _versus_dict(versus: Mapping[str, Versus] | None) -> dict[str, dict[str, Any]] | None:
    return None if versus is None else {name: found.to_dict() for name, found in versus.items()}


def correctness(scored: Mapping[str, ObjectiveResult]) -> dict[str, np.ndarray]:
    """The 1/0 per test sample of each objective's result, as the statistics read it."""
    return {name: result.correct.cpu().numpy().astype(float) for name, result in scored.items()}  # type: ignore[union-attr]


def score_row(
    *,
    number: int | str,
    role: str,
    own: tuple[str, int | str | None],
    val: Mapping[str, float],
    scored: Mapping[str, ObjectiveResult],
    betas: Mapping[str, float],
    c: float,
    relu: Reference | None,
    best_global: Reference | None,
    bootstrap: Bootstrap = Bootstrap(),
    baseline_label: str = "ReLU",
) -> ReportRow:
    """The row of a profile (``own``: its study or stage, and trial) scored on the test split (``scored``)."""
    mine = correctness(scored)
    test = {name: result.value for name, result in scored.items()}
    settings = bootstrap.to_dict()
    return ReportRow(
        number=number,
        role=role,
        val=dict(val),
        test=test,
        test_ci={name: bootstrap_mean(scores=v, **settings) for name, v in mine.items()},
        vs_relu=versus(mine, relu, val=val, own=own, bootstrap=bootstrap),
        vs_global=None if role == BASELINE else versus(mine, best_global, val=val, own=own, bootstrap=bootstrap),
        val_test_gap={name: val[name] - test[name] for name in test if name in val},
        test_details={name: result.details for name, result in scored.items()},
        betas=dict(betas),
        c=c,
        baseline_label=baseline_label,
    )


def versus(
    mine: Mapping[str, np.ndarray],
    reference: Reference | None,
    *,
    val: Mapping[str, float],
    own: tuple[str, Any],
    bootstrap: Bootstrap = Bootstrap(),
) -> dict[str, Versus] | None:
    """A profile against a reference, objective by objective (None against itself, or without one)."""
    if reference is None or (reference.study, reference.number) == own:
        return None
    found = {}
    for name in mine:
        if name in reference.correct:
            comparison = compare(a=mine[name], b=reference.correct[name], **bootstrap.to_dict())
            val_diff = val[name] - reference.val[name] if name in val and name in reference.val else None
            found[name] = Versus(comparison, val_diff)
    return found
