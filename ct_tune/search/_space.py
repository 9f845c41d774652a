"""The Optuna search space of a study: one ``beta.<unit>`` parameter per unit, plus ``c`` if searched.

Parameter names are the unit names prefixed with ``beta.`` so that ``optuna trials`` and
optuna-dashboard show them readably (``beta.layer3.1``); they are suggested in network order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ct_tune.search._spec import CRange, StudySpec, paper_grid

if TYPE_CHECKING:
    import optuna

BETA_PREFIX = "beta."
C_PARAM = "c"


def beta_param(unit: str) -> str:
    return f"{BETA_PREFIX}{unit}"


def param_names(spec: StudySpec, units: Sequence[str]) -> list[str]:
    names = [beta_param(unit) for unit in units]
    return [*names, C_PARAM] if spec.search.searches_c else names


def distributions(spec: StudySpec, units: Sequence[str]) -> dict[str, optuna.distributions.BaseDistribution]:
    from optuna.distributions import FloatDistribution

    space: dict[str, optuna.distributions.BaseDistribution] = {}
    for unit in units:
        beta = spec.search.range_of(unit)
        space[beta_param(unit)] = FloatDistribution(beta.low, beta.high, step=beta.step, log=beta.log)
    if isinstance(spec.search.c, CRange):
        space[C_PARAM] = FloatDistribution(spec.search.c.low, spec.search.c.high)
    return space


def check_units(spec: StudySpec, units: Sequence[str]) -> None:
    """Refuse per-unit ranges naming units the model does not have (one line, listing the valid ones)."""
    from ct_tune._errors import InputError
    from ct_tune.steering import describe

    unknown = [unit for unit in spec.search.ranges if unit not in units]
    if unknown:
        raise InputError(
            f"search.ranges names unknown unit(s) {describe(unknown)} for granularity {spec.search.granularity!r}; "
            f"valid units: {describe(list(units), limit=40)}"
        )


def suggest(trial: optuna.Trial, spec: StudySpec, units: Sequence[str]) -> tuple[dict[str, float], float]:
    """Ask the trial for every beta (and c) in network order; returns (betas per unit, c)."""
    params = {}
    for unit in units:
        beta = spec.search.range_of(unit)
        params[beta_param(unit)] = trial.suggest_float(
            beta_param(unit), beta.low, beta.high, step=beta.step, log=beta.log
        )
    if isinstance(spec.search.c, CRange):
        params[C_PARAM] = trial.suggest_float(C_PARAM, spec.search.c.low, spec.search.c.high)
    return profile_from_params(params, spec, units)


def profile_from_params(
    params: Mapping[str, Any], spec: StudySpec, units: Sequence[str]
) -> tuple[dict[str, float], float]:
    """(betas per unit, c) from a trial's params; units without a param stay ReLU."""
    betas = {unit: float(params.get(beta_param(unit), 1.0)) for unit in units}
    if isinstance(spec.search.c, CRange):
        return betas, float(params.get(C_PARAM, 0.5))
    return betas, float(spec.search.c)


def uniform_params(value: float, spec: StudySpec, units: Sequence[str]) -> dict[str, float]:
    """Params giving every unit the same beta (and the middle of c's range, if c is searched)."""
    params: dict[str, float] = {beta_param(unit): value for unit in units}
    if isinstance(spec.search.c, CRange):
        params[C_PARAM] = 0.5 if spec.search.c.low <= 0.5 <= spec.search.c.high else spec.search.c.low
    return params


def profile_params(spec: StudySpec, betas: Mapping[str, float], c: float) -> dict[str, float]:
    """Enqueueable params for a profile (units it leaves out stay ReLU), each beta clipped into its unit's
    range; ``c`` where the study searches it."""
    params = uniform_params(1.0, spec, list(betas))
    for unit, value in betas.items():
        beta = spec.search.range_of(unit)
        params[beta_param(unit)] = min(max(value, beta.low), beta.high)
    if C_PARAM in params:
        params[C_PARAM] = c
    return params


def initial_trials(spec: StudySpec, units: Sequence[str]) -> list[tuple[dict[str, float], str]]:
    """Trials enqueued at creation: the ReLU baseline and, if asked, the paper's global grid."""
    trials = []
    if spec.search.enqueue_baseline:
        trials.append((uniform_params(1.0, spec, units), "baseline"))
    if spec.search.enqueue_paper_grid:
        trials += [(uniform_params(value, spec, units), "paper-grid") for value in paper_grid()]
    return trials
