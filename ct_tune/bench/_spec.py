"""The bench spec: what a process loads once to score beta profiles (model, data, objectives, run settings).

A study spec extends it with what is searched and how (``ct_tune.search.StudySpec``); ``evaluate``,
``units`` and trained CT take it alone, so a check added to a study's search section can never break
them. Every field has a default except what cannot be guessed (the model).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from ct_tune._specs import StrictSpec, validated
from ct_tune.objectives import AccuracyObjective, ObjectiveSpec

from pydantic import Field, field_validator, model_validator

__all__ = ["BatchKeys", "BenchSpec", "ClassSpec", "DataSpec", "ModelSpec", "Normalization", "RunSpec", "bench_spec"]


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
    # Decoded splits are cached once per machine and read from there by every process (ct_tune.data._cache);
    # false: every process decodes into its own memory (what ct-tune did before 2026-12-04).
    cache: bool = True
    cache_dir: str | None = None  # default: $CT_TUNE_CACHE, else ~/.cache/ct-tune/splits

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


class RunSpec(StrictSpec):
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # reduced precision applies on CUDA only
    # Rows per forward pass (batched trials: samples x K). auto: as many as fit memory_budget_mb, measured
    # on the model at the data's resolution (ct_tune.bench._memory), at most 256 on a CPU, 1024 on a GPU.
    batch_size: int | Literal["auto"] = "auto"
    memory_budget_mb: int | None = Field(default=None, gt=0)  # auto: 1024 on a CPU, half the free GPU memory
    # On a GPU, a split's compact rows (uint8 for 8-bit images) stay in GPU memory when they fit this; larger
    # splits stream from the machine's cache, a batch at a time through pinned memory.
    data_on_gpu_mb: int = Field(default=4096, ge=0)
    # Trials scored together: K beta profiles in one forward pass over K copies of each batch (accuracy,
    # probe; adversarial attacks run one profile at a time). Pays when one trial does not fill the device
    # (a val set smaller than batch_size, a GPU); on a CPU it was measured no faster than 1.
    trials_per_batch: int = Field(default=1, ge=1)

    @field_validator("batch_size")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"got {value}; give a number of rows (1 or more) or auto")
        return value

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


class BenchSpec(StrictSpec):
    """What a process loads once to score beta profiles: a model, its data, the objectives and how to run."""

    model: ModelSpec
    data: DataSpec = DataSpec()
    objectives: list[ObjectiveSpec] = Field(default_factory=lambda: [AccuracyObjective()], min_length=1)
    run: RunSpec = RunSpec()

    @field_validator("objectives", mode="before")
    @classmethod
    def _names_as_objectives(cls, value: Any) -> Any:
        """``objectives: [accuracy, adversarial]`` is shorthand for ``[{name: accuracy}, ...]``."""
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value

    @model_validator(mode="after")
    def _each_objective_once(self) -> BenchSpec:
        names = [objective.name for objective in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"each objective may appear once; got {', '.join(names)}")
        return self

    @property
    def directions(self) -> list[str]:
        return [objective.direction for objective in self.objectives]

    @property
    def objective_names(self) -> list[str]:
        return [objective.name for objective in self.objectives]


def bench_spec(
    *,
    model: Any,
    data: Any = None,
    objectives: Any = ("accuracy",),
    run: Any = None,
    source: str = "arguments",
) -> BenchSpec:
    """A bench spec from its sections (mappings, as in a spec file); any problem is one ``InputError`` line."""
    sections = {"model": model, "data": data or {}, "objectives": list(objectives), "run": run or {}}
    # mappings as plain dicts: what pydantic validates, and what a one-line error names the fields of
    plain = {key: dict(value) if isinstance(value, Mapping) else value for key, value in sections.items()}
    return validated(BenchSpec, plain, source=source)
