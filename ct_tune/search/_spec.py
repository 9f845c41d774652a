"""Study specs: the YAML file a user writes to describe a search, validated with pydantic.

Every field has a default except what cannot be guessed (the model). Unknown fields are errors, so a
typo never silently falls back to a default. ``load_spec`` turns any problem into one line that names
the field, the value and what is allowed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from ct_tune._errors import InputError
from ct_tune.stores import without_password

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "StudySpec",
    "describe_validation_error",
    "load_spec",
    "paper_grid",
    "parse_duration",
    "parse_yaml",
    "spec_from_dict",
]


def paper_grid() -> list[float]:
    """The paper's global beta grid: 0.70, 0.71, ..., 0.99 (the ReLU baseline beta = 1 is separate)."""
    return [round(0.70 + 0.01 * i, 2) for i in range(30)]


class StrictSpec(BaseModel):
    """Every spec section: unknown keys, changes after parsing, inf and nan are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _number(value: Any) -> Any:
    """Accept fractions written as strings ('8/255'), the way attack budgets are usually given."""
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*/\s*\d+(\.\d+)?\s*", value):
        numerator, denominator = (float(part) for part in value.split("/"))
        if denominator == 0:
            return value
        return numerator / denominator
    return value


# ------------------------------------------------------------------------------------------------
# What is searched
class ClassSpec(StrictSpec):
    """A class of the user's, as LightningCLI configs name it: ``class_path`` + ``init_args``."""

    class_path: str = Field(min_length=1)
    init_args: dict[str, Any] = Field(default_factory=dict)


class Normalization(StrictSpec):
    """Per-channel mean and std: ``(pixels - mean) / std`` is what a network (or a data loader) works in."""

    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Normalization:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean and std need one value per channel each; got {len(self.mean)} and {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive; got {self.std}")
        return self

    def pair(self) -> tuple[list[float], list[float]]:
        return list(self.mean), list(self.std)


class ModelSpec(StrictSpec):
    """One of: ``name`` (built-in, torchvision, ``timm/<name>`` or a ``package.module:function`` factory),
    ``class_path`` (the user's own ``nn.Module`` or ``LightningModule``), or a ct-tune ``checkpoint`` alone.
    ``checkpoint`` with ``name`` or ``class_path`` gives that architecture its weights (a state dict, or a
    Lightning checkpoint)."""

    name: str | None = None
    class_path: str | None = None
    init_args: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = None
    weights: str | None = None  # torchvision weights enum name, e.g. IMAGENET1K_V1
    input_size: int | None = Field(default=None, gt=0)
    normalization: Normalization | None = None  # class_path models that expect normalised input
    pretrained: bool = False  # timm models (name: timm/<name>): timm's pretrained weights for that name

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if self.name is not None and self.class_path is not None:
            raise ValueError("give model.name or model.class_path, not both")
        if self.name is None and self.class_path is None and self.checkpoint is None:
            raise ValueError("give model.name, model.class_path or model.checkpoint")
        if self.init_args and self.class_path is None:
            raise ValueError("model.init_args go with model.class_path")
        if self.normalization is not None and self.class_path is None:
            raise ValueError(
                "model.normalization is for class_path models (built-in, torchvision and timm models bring their own)"
            )
        if self.class_path is not None and self.weights is not None:
            raise ValueError("model.weights names torchvision weights; a class_path model takes model.checkpoint")
        if self.pretrained and not (self.name or "").startswith("timm/"):
            raise ValueError(
                "model.pretrained applies to timm models (name: timm/<name>); torchvision models take weights (DEFAULT)"
            )
        return self

    @property
    def label(self) -> str:
        """How the model is named in tables and MLflow params."""
        return self.class_path or self.name or self.checkpoint or "?"


class BatchKeys(StrictSpec):
    """The keys of dict batches: which entry is the input and which the class label."""

    input: str = Field(min_length=1)
    target: str = Field(min_length=1)


_BUILTIN_ONLY = ("data_dir", "download", "val_fraction", "test_fraction")
_USER_ONLY = ("init_args", "batch_keys", "normalization", "num_classes")


class DataSpec(StrictSpec):
    """One of: ``name`` (a built-in dataset, ``digits`` by default), ``class_path`` (the user's
    ``LightningDataModule``), or ``train`` / ``val`` / ``test`` (one ``Dataset`` class per split)."""

    name: str | None = None
    class_path: str | None = None
    init_args: dict[str, Any] = Field(default_factory=dict)
    train: ClassSpec | None = None
    val: ClassSpec | None = None
    test: ClassSpec | None = None
    data_dir: str | None = None
    download: bool = False
    seed: int = 0  # the split (built-in data); the generators while a user's train loader is read
    val_fraction: float | None = Field(default=None, gt=0, lt=1)
    test_fraction: float | None = Field(default=None, gt=0, lt=1)
    train_size: int | None = Field(default=None, gt=0)  # built-in: stratified subsets; user data: the first N
    val_size: int | None = Field(default=None, gt=0)
    test_size: int | None = Field(default=None, gt=0)
    batch_keys: BatchKeys | None = None  # user data with dict batches
    normalization: Normalization | None = None  # user data served in its own normalised space
    num_classes: int | None = Field(default=None, gt=0)  # user data: else the DataModule's, else the labels'

    @model_validator(mode="before")
    @classmethod
    def _default_dataset(cls, value: Any) -> Any:
        if isinstance(value, dict) and all(
            value.get(key) is None for key in ("name", "class_path", "train", "val", "test")
        ):
            return {**value, "name": "digits"}
        return value

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        for key in ("name", "class_path"):
            if getattr(self, key) == "":  # an unset variable in a template, say: never fall back to digits
                raise ValueError(f"data.{key} is empty; give a dataset name or a module.Class path")
        splits = [s for s in ("train", "val", "test") if getattr(self, s) is not None]
        sources = [bool(self.name), bool(self.class_path), bool(splits)]
        if sum(sources) != 1:
            raise ValueError(
                "give one of data.name (built-in), data.class_path (a LightningDataModule) or "
                "data.train / data.val / data.test (Dataset classes)"
            )
        if splits and self.val is None:
            raise ValueError("Dataset classes need at least data.val (what trials score)")
        if self.name:
            extra = [key for key in _USER_ONLY if getattr(self, key) not in (None, {})]
            if extra:
                raise ValueError(
                    f"data.{extra[0]} is for your own data (class_path or Dataset classes), not {self.name}"
                )
        else:
            extra = [key for key in _BUILTIN_ONLY if getattr(self, key) not in (None, False)]
            if extra:
                raise ValueError(f"data.{extra[0]} applies to built-in datasets; your own data splits itself")
            if self.init_args and not self.class_path:
                raise ValueError("data.init_args go with data.class_path (each Dataset class has its own init_args)")
        return self

    @property
    def is_builtin(self) -> bool:
        return bool(self.name)

    @property
    def label(self) -> str:
        """How the data is named in tables and MLflow params."""
        return self.name or self.class_path or (self.val.class_path if self.val else "?")


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


class SearchSpec(StrictSpec):
    granularity: Literal["global", "stage", "block", "site", "custom"] = "block"
    # custom: one unit per entry, {unit: module-path prefix or list of prefixes}; the longest prefix wins
    groups: dict[str, str | list[str]] | None = None
    beta: BetaRange = BetaRange()
    # Ranges for single units (names as `ct-tune units` lists them), overriding `beta` for those units;
    # pipelines use them to search around an earlier stage's best profile.
    ranges: dict[str, BetaRange] = Field(default_factory=dict)
    c: Annotated[float, Field(ge=0, le=1)] | CRange = 0.5  # a number fixes c; a range searches it
    enqueue_baseline: bool = True  # beta = 1 everywhere (plain ReLU) as the first trial
    enqueue_paper_grid: bool = False  # one trial per global beta 0.70, 0.71, ..., 0.99

    @model_validator(mode="after")
    def _enqueued_in_range(self) -> SearchSpec:
        if self.groups is not None and self.granularity != "custom":
            raise ValueError(f"search.groups applies to granularity custom only (not {self.granularity}); set custom")
        if self.granularity == "custom" and not self.groups:
            raise ValueError("granularity custom needs search.groups: {unit: module-path prefix or list of them}")
        ranges = [("beta", self.beta), *((f"ranges.{unit}", r) for unit, r in self.ranges.items())]
        if self.enqueue_baseline:
            for name, beta in ranges:
                if not beta.contains(1.0):
                    raise ValueError(f"enqueue_baseline needs beta 1.0 inside {name} (set its high to 1.0)")
        if self.enqueue_paper_grid:
            for name, beta in ranges:
                outside = [v for v in paper_grid() if not beta.contains(v)]
                if outside:
                    raise ValueError(
                        f"enqueue_paper_grid needs 0.70..0.99 inside {name}; {outside[0]} is outside "
                        f"[{beta.low}, {beta.high}] or off its step"
                    )
        return self

    def range_of(self, unit: str) -> BetaRange:
        return self.ranges.get(unit, self.beta)

    @property
    def lowest(self) -> float:
        """The smallest beta any unit may take (for plot axes)."""
        return min([self.beta.low, *(r.low for r in self.ranges.values())])

    @property
    def searches_c(self) -> bool:
        return isinstance(self.c, CRange)


# ------------------------------------------------------------------------------------------------
# What is scored
class AccuracySpec(StrictSpec):
    name: Literal["accuracy"]
    direction: Literal["maximize", "minimize"] = "maximize"
    top_k: int = Field(default=5, gt=0)


class ProbeSpec(StrictSpec):
    name: Literal["probe"]
    direction: Literal["maximize", "minimize"] = "maximize"
    feature_layer: str | None = None
    l2: float = Field(default=1e-3, ge=0)
    max_iter: int = Field(default=300, gt=0)


class AdversarialSpec(StrictSpec):
    name: Literal["adversarial"]
    direction: Literal["maximize", "minimize"] = "maximize"
    attack: Literal["pgd", "autoattack"] = "pgd"
    norm: Literal["linf", "l2"] = "linf"
    eps: float = Field(default=8 / 255, ge=0)
    steps: int | None = Field(default=None, ge=0)  # PGD 10, AutoAttack 100
    step_size: float | None = Field(default=None, gt=0)
    random_start: bool = True
    restarts: int = Field(default=1, ge=1)
    n: int = Field(default=1000, gt=0)
    seed: int = 0
    # AutoAttack only (default: the original's standard version)
    attacks: list[Literal["apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square"]] | None = Field(
        default=None, min_length=1
    )
    n_queries: int | None = Field(default=None, gt=0)
    n_target_classes: int | None = Field(default=None, ge=1)

    _fractions = field_validator("eps", "step_size", mode="before")(_number)

    @model_validator(mode="before")
    @classmethod
    def _attack_defaults(cls, data: Any) -> Any:
        """The chosen attack's defaults written out, so that ``spec.json`` says what ran."""
        if not isinstance(data, dict):
            return data
        from ct_tune.objectives._adversarial import PGD_STEPS, STANDARD_AUTOATTACK

        filled = dict(data)
        if filled.get("attack") == "autoattack":
            for key in ("attacks", "steps", "n_queries", "n_target_classes"):
                if filled.get(key) is None:
                    value = STANDARD_AUTOATTACK[key]
                    filled[key] = list(value) if isinstance(value, tuple) else value
        elif filled.get("steps") is None:
            filled["steps"] = PGD_STEPS
        return filled

    @model_validator(mode="after")
    def _attack_settings(self) -> AdversarialSpec:
        """The settings that belong to the other attack are refused here, in the objective's words."""
        from ct_tune.objectives import make_objective

        try:
            make_objective("adversarial", **self.model_dump(exclude={"name", "direction"}))
        except InputError as error:
            raise ValueError(str(error)) from None
        return self


ObjectiveSpec = Annotated[AccuracySpec | ProbeSpec | AdversarialSpec, Field(discriminator="name")]


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


class RunSpec(StrictSpec):
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # reduced precision applies on CUDA only
    batch_size: int = Field(default=256, gt=0)  # rows per forward pass (batched trials: samples x K)
    # Trials scored together: K beta profiles in one forward pass over K copies of each batch (accuracy,
    # probe; adversarial attacks run one profile at a time). Pays when one trial does not fill the device
    # (a val set smaller than batch_size, a GPU); on a CPU it was measured no faster than 1.
    trials_per_batch: int = Field(default=1, ge=1)

    @field_validator("device")
    @classmethod
    def _device_syntax(cls, value: str) -> str:
        """Spelling only, at create: whether the GPUs exist is for the machine that runs the study."""
        text = value.strip().lower()
        items = text.split(",")
        if text in ("auto", "cpu") or all(re.fullmatch(r"cuda(:\d+)?", item.strip()) for item in items):
            return text
        raise ValueError(f"got {value!r}; use auto, cpu, cuda, cuda:N or a list like cuda:0,cuda:1")

    @model_validator(mode="after")
    def _precision_on_the_device(self) -> RunSpec:
        if self.device == "cpu" and self.precision != "fp32":
            raise ValueError(
                f"precision {self.precision} applies on CUDA only, and device is cpu: "
                "set run.precision: fp32, or run.device: cuda or auto"
            )
        return self


class StudySpec(StrictSpec):
    """A whole search: what model, what data, what space, what score, which sampler, how long."""

    name: str | None = Field(default=None, min_length=1)
    model: ModelSpec
    data: DataSpec = DataSpec()
    search: SearchSpec = SearchSpec()
    objectives: list[ObjectiveSpec] = Field(default_factory=lambda: [AccuracySpec(name="accuracy")], min_length=1)
    sampler: SamplerSpec = TPESpec(name="tpe")
    pruner: PrunerSpec = NoPrunerSpec(name="none")
    budget: BudgetSpec = BudgetSpec()
    run: RunSpec = RunSpec()
    storage: str | None = None  # Optuna storage URL (default sqlite:///studies/optuna.db)
    tracking_uri: str | None = None  # MLflow backend store (default sqlite:///mlruns/mlflow.db)
    artifact_location: str | None = None  # MLflow artifact root (default next to a SQLite store)

    @field_validator("objectives", mode="before")
    @classmethod
    def _names_as_objectives(cls, value: Any) -> Any:
        """``objectives: [accuracy, adversarial]`` is shorthand for ``[{name: accuracy}, ...]``."""
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("sampler", "pruner", mode="before")
    @classmethod
    def _name_as_table(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> StudySpec:
        names = [objective.name for objective in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"each objective may appear once; got {', '.join(names)}")
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
            raise ValueError("the grid sampler needs a fixed c (search.c: 0.5)")
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

    @property
    def directions(self) -> list[str]:
        return [objective.direction for objective in self.objectives]

    @property
    def objective_names(self) -> list[str]:
        return [objective.name for objective in self.objectives]

    def grid_values(self) -> list[float]:
        """Beta values of the grid sampler: the range's step, else the paper's 0.01 grid in range."""
        if self.search.beta.step is not None:
            return self.search.beta.values()
        beta = self.search.beta
        step = BetaRange(low=beta.low, high=beta.high, step=0.01) if _on_grid(beta.high - beta.low, 0.01) else None
        if step is None:
            raise InputError("the grid sampler needs search.beta.step (e.g. 0.01)")
        return step.values()

    def to_dict(self) -> dict[str, Any]:
        """The spec as a study records it (Optuna attribute, ``spec.json``): store URLs without passwords."""
        data = self.model_dump(mode="json")
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
    if not isinstance(data, dict):
        raise InputError(
            f"{source}: a study spec is a YAML mapping (model:, data:, search:, ...); got {type(data).__name__}"
        )
    try:
        return StudySpec.model_validate(data)
    except ValidationError as error:
        raise InputError(f"{source}: {describe_validation_error(error)}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one silently,
    so a second ``name:`` pasted below the first would win unnoticed). Keys merged with ``<<`` may be
    overridden, as YAML intends."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} given twice (first at line {first.line + 1}); keep one",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def parse_yaml(path: Path) -> Any:
    """A YAML file's content; unreadable or invalid YAML is one line naming the file, line and problem."""
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader: no Python objects
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise InputError(f"{path} is not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a text file") from None


def load_spec(path: str | os.PathLike[str]) -> StudySpec:
    """Read and validate a YAML study spec; every problem is one line naming field, value and fix."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"spec file {path} does not exist (see studies/ for examples)")
    return spec_from_dict(parse_yaml(path), source=str(path))


def describe_validation_error(error: ValidationError) -> str:
    """The most specific validation problem as 'field: got value; what is allowed' (+ how many more)."""
    problems = error.errors(include_url=False)
    # A field typed as a union (c: number | range) fails in every branch; the deepest location is the
    # branch the user meant (a mapping for c fails inside CRange, not at "is not a number").
    # At equal depth a branch's own check (low < high) says more than another branch's type error.
    first = max(problems, key=lambda problem: (len(problem["loc"]), problem["type"] == "value_error"))
    location = _location(first)
    message = first["msg"].removeprefix("Value error, ")
    value = first.get("input")
    kind = first["type"]
    if kind == "extra_forbidden":
        text = f"unknown field {location!r} (check the spelling; see studies/ for every field)"
    elif kind == "missing":
        text = f"{location}: required field is missing"
    elif kind == "union_tag_invalid":
        context = first.get("ctx", {})
        text = f"{location}.{context.get('discriminator', 'name').strip(chr(39))}: got {context.get('tag')!r}; "
        text += f"expected one of {context.get('expected_tags')}"
    elif location and kind not in ("value_error", "assertion_error"):
        text = f"{location}: got {_short(value)}; {_lower_first(message)}"
    elif location:
        text = f"{location}: {message}"
    else:
        text = message
    # Other branches of the same union (their location is a prefix of this one) are not more problems.
    others = {loc for loc in (_location(problem) for problem in problems) if not location.startswith(loc)}
    if others:
        text += f" (and {len(others)} more problem{'s' if len(others) > 1 else ''})"
    return text


def _location(problem: Any) -> str:
    return ".".join(str(part) for part in problem["loc"] if not _is_union_tag(part))


def _is_union_tag(part: Any) -> bool:
    """pydantic puts the discriminator value or a type name in error locations: not a user's field."""
    return isinstance(part, str) and (part in _TAGS or "[" in part or part in ("float", "int", "str", "CRange"))


_TAGS = {
    "accuracy",
    "probe",
    "adversarial",
    "tpe",
    "gp",
    "cmaes",
    "random",
    "grid",
    "nsga2",
    "none",
    "median",
    "percentile",
    "hyperband",
    "successive_halving",
    "function-after",
    "constrained-float",
}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]
