"""Constraints: scored objectives held within a drop of the baseline's value instead of optimised.

``constraints: [{name: accuracy, max_drop: 0.01}]`` makes a trial feasible when its val accuracy is at least
the baseline's minus 0.01. Optuna learns each trial's violation through ``Trial.set_constraint`` (a value
<= 0 holds), which TPE, NSGA-II and GP read when they sample and ``Study.best_trial`` / ``best_trials`` read
when they pick; the trial also carries ``ct_tune.feasible`` (Optuna user attribute, MLflow tag and metric).

The reference is the constrained objectives scored at the baseline profile (the network's own activation:
beta = 1 for ReLU units, beta0 for SiLU and GELU ones; the profile the enqueued baseline trial has). A
worker needs it before its first trial, when the baseline trial may still be running on another worker
(parallel workers start together) or absent (``enqueue_baseline: false``). So each worker reads the
reference stored on the study and, when none is stored yet, scores the baseline profile itself (only the
constrained objectives: for accuracy one pass over val) and stores it.
Scoring is deterministic on a device, so workers that start together and both score it store the same
values; every later worker reads the stored one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ct_tune.search._space import baseline_params, profile_from_params
from ct_tune.tracking.keys import ATTR_CONSTRAINT_REFERENCE

if TYPE_CHECKING:
    from ct_tune.bench import Bench
    from ct_tune.objectives import ObjectiveResult
    from ct_tune.search._spec import StudySpec

    import optuna

__all__ = ["Bound", "Feasibility", "bounds_of", "feasibility", "reference_values", "stored_bounds"]


@dataclass(frozen=True)
class Bound:
    """One constraint with its reference: the value a trial's objective must reach (or stay under)."""

    name: str
    direction: str  # of the objective: maximize means "at least the limit"
    reference: float  # the baseline's value
    max_drop: float

    @property
    def limit(self) -> float:
        return self.reference - self.max_drop if self.direction == "maximize" else self.reference + self.max_drop

    def violation(self, value: float) -> float:
        """<= 0 when ``value`` holds the bound; otherwise by how much it misses (Optuna's constraint value)."""
        return self.limit - value if self.direction == "maximize" else value - self.limit

    def describe(self) -> str:
        sign, op = ("-", ">=") if self.direction == "maximize" else ("+", "<=")
        return f"{self.name} {op} {self.limit:.4f} (baseline {self.reference:.4f} {sign} {self.max_drop:g})"


@dataclass(frozen=True)
class Feasibility:
    """A trial's violation of each constraint (<= 0 holds)."""

    violations: dict[str, float]

    @property
    def feasible(self) -> bool:
        return all(value <= 0 for value in self.violations.values())

    def metrics(self) -> dict[str, float]:
        """What the trial's MLflow run records: ``constraint.<name>`` and ``feasible`` (1 or 0)."""
        return {**{f"constraint.{n}": v for n, v in self.violations.items()}, "feasible": float(self.feasible)}


def bounds_of(spec: StudySpec, reference: Mapping[str, float]) -> list[Bound]:
    """The spec's constraints with the baseline's values."""
    directions = {objective.name: objective.direction for objective in spec.objectives}
    return [Bound(c.name, directions[c.name], float(reference[c.name]), c.max_drop) for c in spec.constraints]


def feasibility(bounds: Sequence[Bound], results: Mapping[str, ObjectiveResult]) -> Feasibility:
    return Feasibility({bound.name: bound.violation(results[bound.name].value) for bound in bounds})


def reference_values(
    *, spec: StudySpec, units: Sequence[str], families: Mapping[str, str], optuna_study: optuna.Study, bench: Bench
) -> dict[str, float]:
    """The constrained objectives at the baseline profile: as stored on the study, else scored here and stored."""
    names = [constraint.name for constraint in spec.constraints]
    stored = optuna_study.user_attrs.get(ATTR_CONSTRAINT_REFERENCE) or {}
    if all(name in stored for name in names):
        return {name: float(stored[name]) for name in names}
    evaluator = bench.evaluator("val", [o for o in spec.objectives if o.name in names])
    betas, c = profile_from_params(baseline_params(spec, units, families), spec, units, families)
    bench.handle.update(betas, c=c)  # type: ignore[union-attr]
    scored = {name: result.value for name, result in evaluator.evaluate().items()}
    optuna_study.set_user_attr(ATTR_CONSTRAINT_REFERENCE, scored)
    return scored


def stored_bounds(spec: StudySpec, optuna_study: optuna.Study) -> list[Bound] | None:
    """The bounds as the workers stored them, None before any worker did."""
    stored = optuna_study.user_attrs.get(ATTR_CONSTRAINT_REFERENCE)
    if not stored or any(c.name not in stored for c in spec.constraints):
        return None
    return bounds_of(spec, stored)
