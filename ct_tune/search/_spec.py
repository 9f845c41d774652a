"""Study specs: the YAML file a user writes to describe a search, validated with pydantic.

A study spec is a bench spec (model, data, objectives, run: ``ct_tune.bench.BenchSpec``) plus what is
searched (``search``), how (``sampler``, ``pruner``), for how long (``budget``) and where it is stored.
Every field has a default except what cannot be guessed (the model). Unknown fields are errors, so a typo
never silently falls back to a default; ``load_spec`` turns any problem into one line that names the
field, the value and what is allowed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any, Literal

from ct_tune._errors import InputError
from ct_tune._names import NAME_RULE, name_problem
from ct_tune._specs import StrictSpec, parse_yaml, validated
from ct_tune.bench import BenchSpec
from ct_tune.steering._families import family_named
from ct_tune.stores import without_password

from pydantic import Field, field_validator, model_validator

__all__ = [
    "BetaRange",
    "CRange",
    "StudySpec",
    "enqueued_problem",
    "family_range",
    "load_spec",
    "paper_grid",
    "parse_duration",
    "spec_from_dict",
]


def paper_grid(family: str = "relu") -> list[float]:
    """The paper's global beta grid: 0.70, 0.71, ..., 0.99 (the ReLU baseline beta = 1 is separate).

    For a gated family (SiLU, GELU) the same 30 steps of 0.01 around its own activation's beta0, 15 on
    each side: 0.35 .. 0.65 without 0.50 for SiLU, 0.4799 .. 0.7799 without 0.6299 for GELU."""
    kind = family_named(family)
    if not kind.gated:
        return [round(0.70 + 0.01 * i, 2) for i in range(30)]
    return [round(kind.baseline + 0.01 * k, 6) for k in range(-15, 16) if k]


def family_range(family: str) -> BetaRange:
    """The default beta range of a gated family's units: its beta0 +- 0.3 (ReLU's is 0.3 wide below 1),
    up to 1 (ReLU): SiLU [0.2, 0.8], GELU [0.3299, 0.9299]."""
    beta0 = family_named(family).baseline
    return BetaRange(low=round(beta0 - 0.3, 6), high=min(1.0, round(beta0 + 0.3, 6)))


# ------------------------------------------------------------------------------------------------
# What is searched
class BetaRange(StrictSpec):
    low: float = Field(default=0.70, gt=0, le=1)
    high: float = Field(default=1.00, gt=0, le=1)
    step: float | None = Field(default=None, gt=0)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> BetaRange:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.step is not None and self.log:
            raise ValueError("step and log cannot be combined (Optuna samples either on a grid or in log space)")
        if self.step is not None and not _on_grid(self.high - self.low, self.step):
            raise ValueError(f"high - low ({self.high - self.low:g}) must be a multiple of step ({self.step:g})")
        return self

    def values(self) -> list[float]:
        """The grid this range defines (needs a step)."""
        assert self.step is not None
        count = round((self.high - self.low) / self.step)
        return [round(self.low + i * self.step, 10) for i in range(count + 1)]

    def contains(self, value: float) -> bool:
        inside = self.low - 1e-12 <= value <= self.high + 1e-12
        return inside and (self.step is None or _on_grid(value - self.low, self.step))


class CRange(StrictSpec):
    low: float = Field(default=0.0, ge=0, le=1)
    high: float = Field(default=1.0, ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> CRange:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


def _on_grid(distance: float, step: float) -> bool:
    return abs(distance / step - round(distance / step)) < 1e-6


def enqueued_problem(search: SearchSpec, name: str, beta: BetaRange, family: str) -> str | None:
    """Why the enqueued trials cannot lie in ``beta`` (the range ``name`` of a ``family`` unit), or None."""
    kind = family_named(family)
    if search.enqueue_baseline and not beta.contains(kind.baseline):
        if not kind.gated:
            hint = "; it is the range of ReLU units, SiLU and GELU ones take search.families" if name == "beta" else ""
            return f"enqueue_baseline needs beta 1.0 inside {name} (set its high to 1.0{hint})"
        return (
            f"enqueue_baseline needs beta {kind.baseline:.4f} ({kind.label}'s own) inside {name} "
            f"[{beta.low}, {beta.high}]; widen it or set enqueue_baseline: false"
        )
    if search.enqueue_paper_grid:
        grid = paper_grid(family)
        outside = [v for v in grid if not beta.contains(v)]
        if outside:
            span = "0.70..0.99" if not kind.gated else f"{grid[0]:g}..{grid[-1]:g} ({kind.label}'s beta0 +- 0.15)"
            return (
                f"enqueue_paper_grid needs {span} inside {name}; {outside[0]} is outside "
                f"[{beta.low}, {beta.high}] or off its step"
            )
    return None


GatedFamily = Literal["silu", "gelu", "gelu_tanh"]


class SearchSpec(StrictSpec):
    granularity: Literal["global", "stage", "block", "site", "custom"] = "block"
    # custom: one unit per entry, {unit: module-path prefix or list of prefixes}; the longest prefix wins
    groups: dict[str, str | list[str]] | None = None
    beta: BetaRange = BetaRange()  # the range of ReLU units
    # The range of SiLU and GELU units, per family (default: family_range, beta0 +- 0.3)
    families: dict[GatedFamily, BetaRange] = Field(default_factory=dict)
    # Ranges for single units (names as `ct-tune units` lists them), overriding `beta` for those units;
    # pipelines use them to search around an earlier stage's best profile.
    ranges: dict[str, BetaRange] = Field(default_factory=dict)
    # A number fixes c; a range searches it; unset: each unit's family's (0.5 for ReLU, the paper's, which is
    # what the field reads then; 1 for SiLU and GELU, their own activation). ``fixed_c`` tells them apart.
    c: Annotated[float, Field(ge=0, le=1)] | CRange = 0.5
    enqueue_baseline: bool = True  # the network's own activation (beta = 1 for ReLU) as the first trial
    enqueue_paper_grid: bool = False  # one trial per global beta 0.70, 0.71, ..., 0.99 (around beta0 if gated)

    @model_validator(mode="after")
    def _enqueued_in_range(self) -> SearchSpec:
        if self.groups is not None and self.granularity != "custom":
            raise ValueError(f"search.groups applies to granularity custom only (not {self.granularity}); set custom")
        if self.granularity == "custom" and not self.groups:
            raise ValueError("granularity custom needs search.groups: {unit: module-path prefix or list of them}")
        # A unit's own range holds 1.0 when the baseline is enqueued, whatever its family (it is only known
        # at creation, where a SiLU or GELU unit's range is checked to hold its beta0 too): ReLU is beta = 1.
        ranges = [
            ("beta", self.beta, "relu"),
            *((f"families.{f}", r, f) for f, r in self.families.items()),
            *((f"ranges.{unit}", r, "relu") for unit, r in self.ranges.items()),
        ]
        for name, beta, family in ranges:
            problem = enqueued_problem(self, name, beta, family)
            if problem:
                raise ValueError(problem)
        return self

    def range_of(self, unit: str, family: str = "relu") -> BetaRange:
        if unit in self.ranges:
            return self.ranges[unit]
        if family == "relu":
            return self.beta
        return self.families.get(family) or family_range(family)  # type: ignore[call-overload]

    def lowest(self, families: Collection[str] = ("relu",)) -> float:
        """The smallest beta any unit of these families may take (for plot axes)."""
        return min([*(self.range_of("", f).low for f in families), *(r.low for r in self.ranges.values())])

    def fixed_c(self, families: Collection[str]) -> float | None:
        """The c of a study whose units have these families, where c is not searched: the spec's number,
        else the families' own c when they share one (0.5 for ReLU, 1 for SiLU and GELU), else None
        (a network mixing ReLU with SiLU or GELU: each unit takes its family's)."""
        if "c" in self.model_fields_set and not isinstance(self.c, CRange):
            return float(self.c)
        defaults = {family_named(family).default_c for family in families} or {0.5}
        return defaults.pop() if len(defaults) == 1 else None

    @property
    def searches_c(self) -> bool:
        return isinstance(self.c, CRange)


# ------------------------------------------------------------------------------------------------
# How the search runs
class TPESpec(StrictSpec):
    name: Literal["tpe"]
    seed: int = 0
    n_startup_trials: int = Field(default=10, ge=0)
    n_ei_candidates: int = Field(default=24, gt=0)
    constant_liar: bool = True  # parallel workers do not pile onto the same point
    group: bool = False


class GPSpec(StrictSpec):
    name: Literal["gp"]
    seed: int = 0
    n_startup_trials: int = Field(default=10, ge=0)
    deterministic_objective: bool = True  # a trial's score has no noise: same betas, same score


class CmaEsSpec(StrictSpec):
    name: Literal["cmaes"]
    seed: int = 0
    n_startup_trials: int = Field(default=1, ge=0)
    sigma0: float | None = Field(default=None, gt=0)
    popsize: int | None = Field(default=None, gt=1)
    use_separable_cma: bool = False
    with_margin: bool = False  # set for discrete (stepped) beta ranges

    @model_validator(mode="after")
    def _supported(self) -> CmaEsSpec:
        if self.use_separable_cma and self.with_margin:  # Optuna's CmaEsSampler refuses the pair
            raise ValueError("use_separable_cma and with_margin cannot both be true (Optuna supports one or the other)")
        return self


class RandomSpec(StrictSpec):
    name: Literal["random"]
    seed: int = 0


class GridSpec(StrictSpec):
    """Every combination of the beta grid (``search.beta.step``, default 0.01) over the units."""

    name: Literal["grid"]
    seed: int = 0


class NSGA2Spec(StrictSpec):
    name: Literal["nsga2"]
    seed: int = 0
    population_size: int = Field(default=50, gt=1)
    crossover_prob: float = Field(default=0.9, ge=0, le=1)
    swapping_prob: float = Field(default=0.5, ge=0, le=1)
    mutation_prob: float | None = Field(default=None, ge=0, le=1)


SamplerSpec = Annotated[TPESpec | GPSpec | CmaEsSpec | RandomSpec | GridSpec | NSGA2Spec, Field(discriminator="name")]


class NoPrunerSpec(StrictSpec):
    name: Literal["none"]


class MedianPrunerSpec(StrictSpec):
    name: Literal["median"]
    n_startup_trials: int = Field(default=5, ge=0)
    n_warmup_steps: int = Field(default=0, ge=0)  # steps are evaluated samples
    interval_steps: int = Field(default=1, gt=0)


class PercentilePrunerSpec(StrictSpec):
    name: Literal["percentile"]
    percentile: float = Field(default=25.0, gt=0, lt=100)
    n_startup_trials: int = Field(default=5, ge=0)
    n_warmup_steps: int = Field(default=0, ge=0)
    interval_steps: int = Field(default=1, gt=0)


class HyperbandPrunerSpec(StrictSpec):
    name: Literal["hyperband"]
    min_resource: int = Field(default=1, gt=0)
    reduction_factor: int = Field(default=3, gt=1)


class SuccessiveHalvingPrunerSpec(StrictSpec):
    name: Literal["successive_halving"]
    min_resource: int | Literal["auto"] = "auto"
    reduction_factor: int = Field(default=4, gt=1)
    min_early_stopping_rate: int = Field(default=0, ge=0)


PrunerSpec = Annotated[
    NoPrunerSpec | MedianPrunerSpec | PercentilePrunerSpec | HyperbandPrunerSpec | SuccessiveHalvingPrunerSpec,
    Field(discriminator="name"),
]


class BudgetSpec(StrictSpec):
    n_trials: int | None = Field(default=50, gt=0)  # total over all workers
    timeout: float | None = Field(default=None, gt=0)  # seconds per `study run`; "1h30m" accepted

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value


class StudySpec(BenchSpec):
    """A whole search: the bench (model, data, objectives, run), the space, the sampler and how long."""

    name: str | None = None
    search: SearchSpec = SearchSpec()
    sampler: SamplerSpec = TPESpec(name="tpe")
    pruner: PrunerSpec = NoPrunerSpec(name="none")
    budget: BudgetSpec = BudgetSpec()
    storage: str | None = None  # Optuna storage URL (default sqlite:///studies/optuna.db)
    tracking_uri: str | None = None  # MLflow backend store (default sqlite:///mlruns/mlflow.db)
    artifact_location: str | None = None  # MLflow artifact root (default next to a SQLite store)

    @field_validator("name")
    @classmethod
    def _a_name_for_files(cls, value: str | None) -> str | None:
        problem = None if value is None else name_problem(value)
        if problem is not None:
            raise ValueError(f"{problem}; use {NAME_RULE}")
        return value

    @field_validator("sampler", "pruner", mode="before")
    @classmethod
    def _name_as_table(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> StudySpec:
        multi = len(self.objectives) > 1
        if multi and self.pruner.name != "none":
            raise ValueError("pruning needs a single objective (Optuna cannot prune multi-objective trials)")
        if self.run.trials_per_batch > 1 and self.pruner.name != "none":
            raise ValueError(
                f"run.trials_per_batch: {self.run.trials_per_batch} scores trials together, so none can be pruned "
                "midway; set pruner: none, or trials_per_batch: 1"
            )
        if self.sampler.name == "cmaes" and multi:
            raise ValueError("the cmaes sampler handles a single objective; use tpe or nsga2 for several")
        if self.sampler.name == "grid" and self.search.searches_c:
            raise ValueError("the grid sampler needs a fixed c (search.c: 0.5, or unset for each family's own)")
        if self.sampler.name == "grid" and self.search.ranges:
            raise ValueError("the grid sampler takes one beta grid for every unit; remove search.ranges")
        if self.budget.n_trials is None and self.budget.timeout is None:
            raise ValueError("set budget.n_trials or budget.timeout (or both)")
        enqueued = int(self.search.enqueue_baseline) + (30 if self.search.enqueue_paper_grid else 0)
        if self.budget.n_trials is not None and self.budget.n_trials < enqueued:
            raise ValueError(
                f"budget.n_trials ({self.budget.n_trials}) is smaller than the {enqueued} enqueued trials "
                "(baseline and paper grid)"
            )
        return self

    def grid_values(self, family: str = "relu") -> list[float]:
        """Beta values of the grid sampler for units of ``family``: the range's step, else a 0.01 grid in range."""
        beta = self.search.range_of("", family)
        if beta.step is not None:
            return beta.values()
        step = BetaRange(low=beta.low, high=beta.high, step=0.01) if _on_grid(beta.high - beta.low, 0.01) else None
        if step is None:
            field = "search.beta" if family == "relu" else f"search.families.{family}"
            raise InputError(f"the grid sampler needs {field}.step (e.g. 0.01)")
        return step.values()

    @property
    def grouping(self) -> dict[str, Any]:
        """How a bench groups the ReLU sites into this study's units: ``Bench.open(spec, **spec.grouping)``."""
        return {"granularity": self.search.granularity, "groups": self.search.groups}

    def to_dict(self) -> dict[str, Any]:
        """The spec as a study records it (Optuna attribute, ``spec.json``): store URLs without passwords."""
        data = self.model_dump(mode="json")
        if "c" not in self.search.model_fields_set:  # unset stays unset: SiLU and GELU units take c = 1
            del data["search"]["c"]
        for key in ("storage", "tracking_uri", "artifact_location"):
            if data[key] is not None:
                data[key] = without_password(data[key])
        return data


def parse_duration(text: str) -> float:
    """'90', '90s', '15m', '2h', '1h30m' -> seconds."""
    cleaned = text.strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", cleaned):
        return float(cleaned)
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", cleaned)
    if not cleaned or parts is None:
        raise ValueError(f"{text!r} is not a duration; write seconds or e.g. 90s, 15m, 2h, 1h30m")
    hours, minutes, seconds = (float(p) if p else 0.0 for p in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


def spec_from_dict(data: Any, *, source: str = "spec") -> StudySpec:
    """Validate a study spec given as a mapping; every problem is one line naming field, value and fix."""
    if not isinstance(data, dict):
        raise InputError(
            f"{source}: a study spec is a YAML mapping (model:, data:, search:, ...); got {type(data).__name__}"
        )
    return validated(StudySpec, data, source=source)


def load_spec(path: str | os.PathLike[str]) -> StudySpec:
    """Read and validate a YAML study spec; every problem is one line naming field, value and fix."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"spec file {path} does not exist (see studies/ for examples)")
    return spec_from_dict(parse_yaml(path), source=str(path))
