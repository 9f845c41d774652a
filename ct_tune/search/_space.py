"""The Optuna search space of a study: one ``beta.<unit>`` parameter per unit, plus ``c`` if searched.

Parameter names are the unit names prefixed with ``beta.`` so that ``optuna trials`` and
optuna-dashboard show them readably (``beta.layer3.1``); they are suggested in network order. Each unit's
range, baseline and paper grid follow its activation family (``families``: unit -> ``relu``, ``silu``,
``gelu``, ``gelu_tanh``; a unit missing from it is ReLU): the enqueued baseline is the network's own
activation, beta = 1 for ReLU units and beta0 with c = 1 for SiLU and GELU units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ct_tune.search._spec import CRange, StudySpec, enqueued_problem, paper_grid
from ct_tune.steering._families import family_named

if TYPE_CHECKING:
    import optuna

BETA_PREFIX = "beta."
C_PARAM = "c"

Families = Mapping[str, str]  # unit -> activation family; units not in it are ReLU


def beta_param(unit: str) -> str:
    return f"{BETA_PREFIX}{unit}"


def param_names(spec: StudySpec, units: Sequence[str]) -> list[str]:
    names = [beta_param(unit) for unit in units]
    return [*names, C_PARAM] if spec.search.searches_c else names


def _range(spec: StudySpec, unit: str, families: Families):
    return spec.search.range_of(unit, families.get(unit, "relu"))


def distributions(
    spec: StudySpec, units: Sequence[str], families: Families | None = None
) -> dict[str, optuna.distributions.BaseDistribution]:
    from optuna.distributions import FloatDistribution

    families = families or {}
    space: dict[str, optuna.distributions.BaseDistribution] = {}
    for unit in units:
        beta = _range(spec, unit, families)
        space[beta_param(unit)] = FloatDistribution(beta.low, beta.high, step=beta.step, log=beta.log)
    if isinstance(spec.search.c, CRange):
        space[C_PARAM] = FloatDistribution(spec.search.c.low, spec.search.c.high)
    return space


def check_units(spec: StudySpec, units: Sequence[str], families: Families | None = None) -> None:
    """Refuse per-unit ranges naming units the model does not have, and enqueued trials (the network's own
    activation, the paper grid) outside a unit's range or c (one line each, naming the field)."""
    from ct_tune._errors import InputError
    from ct_tune.steering import describe

    families = families or {}
    unknown = [unit for unit in spec.search.ranges if unit not in units]
    if unknown:
        raise InputError(
            f"search.ranges names unknown unit(s) {describe(unknown)} for granularity {spec.search.granularity!r}; "
            f"valid units: {describe(list(units), limit=40)}"
        )
    for unit, beta in spec.search.ranges.items():
        problem = enqueued_problem(spec.search, f"ranges.{unit}", beta, families.get(unit, "relu"))
        if problem:
            raise InputError(problem)
    gated = sorted({family for family in families.values() if family_named(family).gated})
    if gated and spec.search.enqueue_baseline:
        _check_baseline_c(spec, gated)


def _check_baseline_c(spec: StudySpec, gated: Sequence[str]) -> None:
    """A SiLU or GELU unit is its own activation at c = 1 only: the enqueued baseline needs it."""
    from ct_tune._errors import InputError

    c, label = spec.search.c, family_named(gated[0]).label
    if isinstance(c, CRange) and not c.low <= 1.0 <= c.high:
        raise InputError(
            f"search.c [{c.low}, {c.high}] leaves out c = 1, where this network's {label} is its own activation "
            "(the enqueued baseline); raise its high to 1, or set enqueue_baseline: false"
        )
    if "c" in spec.search.model_fields_set and not isinstance(c, CRange) and c != 1.0:
        raise InputError(
            f"search.c: {c} makes the enqueued baseline something else than this network's own {label} (it needs "
            "c = 1); leave c unset (each family takes its own), search it with a range that holds 1, or set "
            "enqueue_baseline: false"
        )


def suggest(
    trial: optuna.Trial, spec: StudySpec, units: Sequence[str], families: Families | None = None
) -> tuple[dict[str, float], float | None]:
    """Ask the trial for every beta (and c) in network order; returns (betas per unit, c)."""
    families = families or {}
    params = {}
    for unit in units:
        beta = _range(spec, unit, families)
        params[beta_param(unit)] = trial.suggest_float(
            beta_param(unit), beta.low, beta.high, step=beta.step, log=beta.log
        )
    if isinstance(spec.search.c, CRange):
        params[C_PARAM] = trial.suggest_float(C_PARAM, spec.search.c.low, spec.search.c.high)
    return profile_from_params(params, spec, units, families)


def profile_from_params(
    params: Mapping[str, Any], spec: StudySpec, units: Sequence[str], families: Families | None = None
) -> tuple[dict[str, float], float | None]:
    """(betas per unit, c) from a trial's params; units without a param stay ReLU. c is None for a network
    mixing ReLU with SiLU or GELU and no c given: each unit takes its family's."""
    families = families or {}
    betas = {unit: float(params.get(beta_param(unit), 1.0)) for unit in units}
    if isinstance(spec.search.c, CRange):
        return betas, float(params.get(C_PARAM, _baseline_c(families)))
    return betas, spec.search.fixed_c([families.get(unit, "relu") for unit in units])


def _baseline_c(families: Families) -> float:
    """The c of the enqueued trials where c is searched: 1 if a unit is SiLU or GELU (their own activation
    needs it; ReLU units at beta = 1 ignore c), else 0.5, the paper's."""
    return 1.0 if any(family_named(family).gated for family in families.values()) else 0.5


def uniform_params(
    value: float, spec: StudySpec, units: Sequence[str], families: Families | None = None
) -> dict[str, float]:
    """Params giving every unit the same beta (and the enqueued trials' c, if c is searched)."""
    params: dict[str, float] = {beta_param(unit): value for unit in units}
    _add_c(params, spec, families or {})
    return params


def _add_c(params: dict[str, float], spec: StudySpec, families: Families) -> None:
    if isinstance(spec.search.c, CRange):
        c = _baseline_c(families)
        params[C_PARAM] = c if spec.search.c.low <= c <= spec.search.c.high else spec.search.c.low


def baseline_params(spec: StudySpec, units: Sequence[str], families: Families | None = None) -> dict[str, float]:
    """The network's own activation: every unit at its family's beta0 (1 for ReLU)."""
    families = families or {}
    params = {beta_param(unit): family_named(families.get(unit, "relu")).baseline for unit in units}
    _add_c(params, spec, families)
    return params


def profile_params(
    spec: StudySpec, betas: Mapping[str, float], c: float | None, families: Families | None = None
) -> dict[str, float]:
    """Enqueueable params for a profile (units it leaves out stay ReLU), each beta clipped into its unit's
    range; ``c`` where the study searches it."""
    families = families or {}
    params = uniform_params(1.0, spec, list(betas), families)
    for unit, value in betas.items():
        beta = _range(spec, unit, families)
        params[beta_param(unit)] = min(max(value, beta.low), beta.high)
    if C_PARAM in params and c is not None:
        params[C_PARAM] = c
    return params


def initial_trials(
    spec: StudySpec, units: Sequence[str], families: Families | None = None
) -> list[tuple[dict[str, float], str]]:
    """Trials enqueued at creation: the network's own activation and, if asked, the paper's global grid
    (for SiLU and GELU units the same 30 steps around their beta0: ``paper_grid``)."""
    families = families or {}
    trials = []
    if spec.search.enqueue_baseline:
        trials.append((baseline_params(spec, units, families), "baseline"))
    if spec.search.enqueue_paper_grid:
        grids = {unit: paper_grid(families.get(unit, "relu")) for unit in units}
        for i in range(len(paper_grid())):
            params = {beta_param(unit): grids[unit][i] for unit in units}
            _add_c(params, spec, families)
            trials.append((params, "paper-grid"))
    return trials
