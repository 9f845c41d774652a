"""What a trial scores: clean accuracy, linear-probe accuracy, adversarial (robust) accuracy.

Each objective is its own spec (a frozen pydantic model of its settings, listed as it is in a study spec)
with ``evaluate(target, data, report)``; it scores the network as it currently is (the caller steers it),
on tensors already on the device, and can report a running value after every chunk so that a
single-objective study can prune.
"""

from __future__ import annotations

from ct_tune.objectives._accuracy import AccuracyObjective
from ct_tune.objectives._adversarial import AdversarialObjective, fixed_subset, pgd_attack
from ct_tune.objectives._base import PRECISIONS, ComputeClock, ObjectiveResult, ReportFn
from ct_tune.objectives._evaluator import OBJECTIVES, Evaluator, Objective, ObjectiveSpec, make_objective
from ct_tune.objectives._probe import FeatureTap, ProbeObjective, default_feature_layer, fit_linear_probe
from ct_tune.objectives._target import EvalData, EvalTarget

__all__ = [
    "OBJECTIVES",
    "PRECISIONS",
    "AccuracyObjective",
    "AdversarialObjective",
    "ComputeClock",
    "EvalData",
    "EvalTarget",
    "Evaluator",
    "FeatureTap",
    "Objective",
    "ObjectiveResult",
    "ObjectiveSpec",
    "ProbeObjective",
    "ReportFn",
    "default_feature_layer",
    "fit_linear_probe",
    "fixed_subset",
    "make_objective",
    "pgd_attack",
]
