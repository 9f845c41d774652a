"""The evaluator: every objective of a trial, scored on the network as it is currently steered."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any

from ct_tune._errors import InputError
from ct_tune._specs import validated
from ct_tune.objectives._accuracy import AccuracyObjective
from ct_tune.objectives._adversarial import AdversarialObjective
from ct_tune.objectives._base import ObjectiveResult, ReportFn
from ct_tune.objectives._probe import ProbeObjective
from ct_tune.objectives._target import EvalData, EvalTarget

if TYPE_CHECKING:
    from ct_tune.steering import SteeringHandle

from pydantic import Field

__all__ = ["OBJECTIVES", "Evaluator", "Objective", "ObjectiveSpec", "make_objective"]

Objective = AccuracyObjective | ProbeObjective | AdversarialObjective
# An objective as a spec lists it (``objectives: [{name: adversarial, eps: 8/255}]``): its settings are the
# objective itself, one schema for both.
ObjectiveSpec = Annotated[Objective, Field(discriminator="name")]

OBJECTIVES: dict[str, type[Objective]] = {
    cls.model_fields["name"].default: cls for cls in (AccuracyObjective, ProbeObjective, AdversarialObjective)
}


def make_objective(name: str, **settings: Any) -> Objective:
    """Build an objective by name; unknown names or settings are one-line errors."""
    cls = OBJECTIVES.get(name)
    if cls is None:
        raise InputError(f"unknown objective {name!r}; choose one of: {', '.join(OBJECTIVES)}")
    allowed = [field for field in cls.model_fields if field != "name"]
    unknown = [key for key in settings if key not in allowed]
    if unknown:
        raise InputError(f"objective {name!r} has no setting {unknown[0]!r}; settings: {', '.join(allowed)}")
    return validated(cls, {"name": name, **settings}, source=f"objective {name!r}")


class Evaluator:
    """Scores the network, as currently steered, on every objective of a trial.

    The tensors are materialised once (on the device) and reused by every trial. Only a single
    objective gets the ``report`` callback: Optuna cannot prune multi-objective trials.
    """

    def __init__(self, target: EvalTarget, data: EvalData, objectives: Sequence[Objective]) -> None:
        if not objectives:
            raise InputError("a trial needs at least one objective")
        names = [objective.name for objective in objectives]
        if len(set(names)) != len(names):
            raise InputError(f"each objective may appear once; got {', '.join(names)}")
        if any(objective.needs_train for objective in objectives) and data.train_x is None:
            raise InputError("the probe objective needs the train split; load it into EvalData")
        self.target = target
        self.data = data
        self.objectives = list(objectives)

    @property
    def names(self) -> list[str]:
        return [objective.name for objective in self.objectives]

    def evaluate(
        self, report: ReportFn | None = None, *, report_to: str | None = None
    ) -> Mapping[str, ObjectiveResult]:
        """Every objective's result; ``report`` follows the objective ``report_to`` (a study's one optimised
        objective when others are only constrained), or the only objective when none is named."""
        if report_to is None and len(self.objectives) == 1:
            report_to = self.objectives[0].name
        self.target.net.eval()
        results: dict[str, ObjectiveResult] = {}
        for objective in self.objectives:
            told = report if objective.name == report_to else None
            results[objective.name] = objective.evaluate(self.target, self.data, told)
        return results

    def evaluate_profiles(
        self, handle: SteeringHandle, profiles: Sequence[tuple[Mapping[str, float], float]]
    ) -> list[dict[str, ObjectiveResult]]:
        """Score K profiles ``(betas, c)``: one result mapping per profile, in order.

        Accuracy and probe score all K in the same forward passes (the handle steers with K profiles,
        each on its own copy of the batch). The adversarial objective runs its attacks one profile at
        a time: PGD drops each sample once fooled, so K profiles would leave K different batches.
        """
        if len(profiles) == 1:
            handle.update(profiles[0][0], c=profiles[0][1])
            return [dict(self.evaluate())]
        k = len(profiles)
        self.target.net.eval()
        found: list[dict[str, ObjectiveResult]] = [{} for _ in range(k)]
        batched = [o for o in self.objectives if hasattr(o, "evaluate_many")]
        if batched:
            handle.update_batched([betas for betas, _ in profiles], c=[c for _, c in profiles])
            for objective in batched:
                for i, result in enumerate(objective.evaluate_many(self.target, self.data, k)):
                    found[i][objective.name] = result
        for objective in (o for o in self.objectives if not hasattr(o, "evaluate_many")):
            for i, (betas, c) in enumerate(profiles):
                handle.update(betas, c=c)
                found[i][objective.name] = objective.evaluate(self.target, self.data, None)
        return [{name: results[name] for name in self.names} for results in found]
