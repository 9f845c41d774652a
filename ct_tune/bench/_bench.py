"""What a process loads once to score beta profiles: the model on its device, the data, the steering handle
and the evaluators, from a ``BenchSpec``. ``create_study`` opens one to find the units and record what the
study was made with; every worker, ``Study.report``, ``ct-tune evaluate`` and trained CT open one to score
profiles.

A study records three fingerprints at creation (its *identity*): the ReLU call sites, the weights and the
data split. A bench opened later for the same study compares its own and refuses to score with any that
differs, so a checkpoint replaced on disk or a changed dataset never mixes two models' scores in one study.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ct_tune._errors import InputError
from ct_tune.bench._memory import rows_per_pass
from ct_tune.bench._spec import BenchSpec
from ct_tune.data import ComponentSpec, Samples, UserData
from ct_tune.objectives import EvalData, EvalTarget, Evaluator, Objective
from ct_tune.steering import Groups, SteeringHandle, Trace, checked_trace, group_sites, steer_traced, unit_families

import torch
from torch import nn

if TYPE_CHECKING:
    from ct_tune.data import CTDataModule
    from ct_tune.models import LoadedModel

__all__ = ["Bench", "hash_weights", "open_data", "open_model", "prepare_data", "resolve_device"]

logger = logging.getLogger(__name__)

_DECODE_BATCH = 64  # images read per step while a split is decoded (user Dataset classes, built-in data)


def resolve_device(device: str) -> torch.device:
    """``auto`` picks the first GPU when there is one; an unavailable device is a one-line error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} asked for, but this machine has no usable CUDA GPU; use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    elif resolved.type != "cpu":
        raise InputError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    return resolved


def hash_weights(net: nn.Module) -> str:
    """Short hash of every tensor of the state dict (names, dtypes, shapes, values): equal weights, equal hash."""
    digest = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()[:16]


def check_split_matches_pretraining(model: LoadedModel, data: CTDataModule) -> None:
    """Refuse a split whose val/test could hold images the checkpoint was trained on.

    The partition of a dataset into train/val/test is fixed by its seed and fractions; subsets
    (``train_size``, ``val_size``) only shrink the same, disjoint splits. Datasets with official val and
    test splits do not depend on either.
    """
    trained = model.metadata.get("dataset") or {}
    if trained.get("name") != data.name:
        return
    before, now = trained.get("settings") or {}, data.settings
    keys = ["val_fraction", "test_fraction"]
    if now.get("val_fraction") is not None or now.get("test_fraction") is not None:
        keys.append("seed")
    changed = [f"{key} {before.get(key)} -> {now.get(key)}" for key in keys if before.get(key) != now.get(key)]
    if changed:
        raise InputError(
            f"the checkpoint was pretrained on {data.name} with another split ({', '.join(changed)}): its val/test "
            "images may have been trained on; use the split settings it was trained with (data.seed, "
            "data.val_fraction, data.test_fraction)"
        )


def open_data(spec: BenchSpec, *, prepare: bool, recorded: Mapping[str, Any] | None = None) -> CTDataModule | UserData:
    """The spec's data: a built-in dataset split three ways, or the user's DataModule or Datasets.

    ``recorded``: what a study recorded of its data; a process that does not ``prepare`` maps the cached
    splits holding those values instead of reading the user's loaders again."""
    from ct_tune.data import SplitCache, create_datamodule

    data = spec.data
    if data.cache and prepare:  # create, launch, report: said here, not by every worker of the study
        SplitCache(data.cache_dir).check_writable()
    if data.is_builtin:
        return create_datamodule(
            data.name,  # type: ignore[arg-type]
            data_dir=data.data_dir,
            download=data.download,
            seed=data.seed,
            val_fraction=data.val_fraction,
            test_fraction=data.test_fraction,
            batch_size=_DECODE_BATCH,
            train_size=data.train_size,
            val_size=data.val_size,
            test_size=data.test_size,
            cache=data.cache,
            cache_dir=data.cache_dir,
        )
    settings: dict[str, Any] = {
        "batch_size": _DECODE_BATCH,
        "batch_keys": (data.batch_keys.input, data.batch_keys.target) if data.batch_keys else None,
        "normalization": data.normalization.pair() if data.normalization else None,
        "num_classes": data.num_classes,
        "sizes": {"train": data.train_size, "val": data.val_size, "test": data.test_size},
        "seed": data.seed,
        "cache": SplitCache(data.cache_dir) if data.cache else None,
        "known": (recorded or {}).get("fingerprints"),
    }
    if data.class_path:
        return UserData.from_datamodule(ComponentSpec(data.class_path, data.init_args), prepare=prepare, **settings)
    splits = {s: getattr(data, s) for s in ("train", "val", "test") if getattr(data, s) is not None}
    components = {s: ComponentSpec(c.class_path, c.init_args) for s, c in splits.items()}
    return UserData.from_datasets(components, fresh=prepare, **settings)


def prepare_data(spec: BenchSpec, *, recorded: Mapping[str, Any] | None = None, study: str = "") -> None:
    """What a launch runs once on its machine before its workers start: a user DataModule's
    ``prepare_data``, then the user's splits the trials read, into the machine's cache (read afresh, so
    edited files are seen here, in one line, not by every worker). The workers then map the cache."""
    if spec.data.is_builtin:
        return  # the first worker to need a split caches it (its key is known without reading the images)
    data = open_data(spec, prepare=True)
    assert isinstance(data, UserData)
    if not spec.data.cache:
        return  # every worker reads the loaders itself
    data.samples("val")
    if any(o.needs_train for o in spec.objectives):
        data.samples("train")
    before = (recorded or {}).get("fingerprint")
    if before and before != data.fingerprint:
        raise InputError(
            identity_problem(["the data differs (another dataset, split seed, fractions or files)"], study)
        )


def identity_problem(problems: Sequence[str], study: str) -> str:
    """The one line refusing to score for a study with another model or data than it was created with."""
    return (
        f"this process cannot score trials of study {study!r}: {'; '.join(problems)} than when the study "
        "was created; restore what it was created with, or create a new study"
    )


def open_model(spec: BenchSpec, data: CTDataModule | UserData) -> LoadedModel:
    """The spec's model, built for the data's classes and channels (a class_path model decides its own).

    Built under a fixed seed, so a model without a checkpoint or pretrained weights (a smoke test, a head
    a checkpoint leaves out) gets the same weights in every worker, and the caller's RNG is left alone.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        loaded = _build_model(spec, data)
    model = spec.model  # said once it is built: a bad model name is its own one-line error
    if model.name and not (model.checkpoint or model.weights or model.pretrained):
        logger.warning(
            "model %s has no checkpoint or pretrained weights: it is scored with random weights (seed 0); "
            "give model.checkpoint (or weights / pretrained) to tune a trained network",
            model.name,
        )
    return loaded


def _build_model(spec: BenchSpec, data: CTDataModule | UserData) -> LoadedModel:
    from ct_tune.models import create_model, load_checkpoint, load_user_model

    model = spec.model
    if model.class_path:
        return load_user_model(
            model.class_path,
            model.init_args,
            checkpoint=model.checkpoint,
            normalization=model.normalization.pair() if model.normalization else None,
            input_size=model.input_size,
            num_classes=data.num_classes,
        )
    channels = data.native_channels if data.native_channels in (1, 3) else 3
    if model.name and model.checkpoint:
        return load_checkpoint(
            model.checkpoint,
            model=model.name,
            num_classes=data.num_classes,
            in_channels=channels,
            input_size=model.input_size,
        )
    return create_model(
        model.checkpoint or model.name,  # type: ignore[arg-type]
        num_classes=data.num_classes,
        in_channels=channels,
        weights=model.weights,
        input_size=model.input_size,
        pretrained=model.pretrained,
    )


def example_input(data: CTDataModule | UserData, device: torch.device) -> torch.Tensor:
    """One input in pixel space: a val sample of the user's data, zeros shaped as built-in data is served."""
    if isinstance(data, UserData):
        return data.example_input(device)
    return torch.zeros(1, data.channels, data.size, data.size, device=device)


def input_normalizer(model: LoadedModel, data: CTDataModule | UserData) -> Callable[[torch.Tensor], torch.Tensor]:
    """Pixels to what the network is fed: the model's normalisation, else the one the data declared, else none."""
    if model.input_spec is not None:
        return model.normalize
    declared = data.normalizer() if isinstance(data, UserData) else None
    return declared if declared is not None else _identity


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class Bench:
    """A model and its data, loaded once and kept; betas change through ``handle.update``."""

    spec: BenchSpec
    model: LoadedModel
    data: CTDataModule | UserData
    device: torch.device
    trace: Trace
    weights_fingerprint: str
    normalize: Callable[[torch.Tensor], torch.Tensor]  # pixels to what the network is fed
    granularity: str = "global"  # how the ReLU sites group into units (one beta each)
    groups: Groups | None = None  # the units of granularity custom
    handle: SteeringHandle | None = None
    seconds_to_load: float = 0.0
    batch_size: int = 256  # rows per forward pass: run.batch_size, or what fits the memory budget (auto)
    _evaluators: dict[str, Evaluator] = field(default_factory=dict)

    @classmethod
    def open(
        cls,
        spec: BenchSpec,
        *,
        granularity: str = "global",
        groups: Groups | None = None,
        device: str | None = None,
        steer: bool = True,
        prepare: bool = True,
        recorded: Mapping[str, Any] | None = None,
    ) -> Bench:
        """Load model and data, find the ReLU sites and group them into units at ``granularity`` (``groups``
        for custom); with ``steer`` attach CT at beta = 1 (plain ReLU). ``device`` overrides ``run.device``.

        ``prepare`` runs a user DataModule's ``prepare_data`` first (once per machine: the processes that
        create, launch or report do; the workers a launch starts do not), and reads the user's loaders
        afresh; ``recorded`` (a study's record of its data) lets a worker map the cached splits instead.
        """
        started = time.perf_counter()
        resolved = resolve_device(device or spec.run.device)
        data = open_data(spec, prepare=prepare, recorded=recorded)
        model = open_model(spec, data)
        if isinstance(data, UserData):
            data.samples("val")  # read now: a study's identity includes what trials score
            if any(o.needs_train for o in spec.objectives):
                data.samples("train")
            if any(o.name == "adversarial" for o in spec.objectives):
                data.check_pixel_range("val")
        else:
            check_split_matches_pretraining(model, data)
            data.input_spec = model.input_spec
        weights = hash_weights(model.net)  # on the CPU copy, before it moves to the device
        model.to(resolved).eval()
        normalize = input_normalizer(model, data)
        trace = checked_trace(model.net, normalize(example_input(data, resolved)))
        bench = cls(spec, model, data, resolved, trace, weights, normalize, granularity, groups)
        bench._check_logits()
        bench.batch_size = bench._rows_per_pass()
        if steer:
            bench.handle = steer_traced(model.net, 1.0, c=None, granularity=granularity, trace=trace, groups=groups)
        bench.seconds_to_load = time.perf_counter() - started
        return bench

    def example(self) -> torch.Tensor:
        """One input as the network is fed it (normalised, on the device): a forward pass to look inside."""
        return self.normalize(example_input(self.data, self.device))

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def _rows_per_pass(self) -> int:
        run = self.spec.run
        if run.batch_size != "auto":
            return int(run.batch_size)
        gradients = any(o.name == "adversarial" for o in self.spec.objectives)
        return rows_per_pass(
            self.model.net, self.example(), device=self.device, budget_mb=run.memory_budget_mb, gradients=gradients
        )

    def _check_logits(self) -> None:
        """Accuracy and attacks read the network's output as logits (N, classes): check that once, here."""
        if not any(o.name in ("accuracy", "adversarial") for o in self.spec.objectives):
            return
        with torch.no_grad():
            output = self.model.net(self.example())
        if not isinstance(output, torch.Tensor) or output.dim() != 2:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise InputError(
                f"{type(self.model.net).__name__}'s forward returns {shape}; the accuracy and adversarial objectives "
                "score logits shaped (batch, classes) (use the probe objective for a feature extractor)"
            )
        if output.shape[1] < self.num_classes:
            raise InputError(
                f"{type(self.model.net).__name__} gives {output.shape[1]} logits but the data has {self.num_classes} "
                "classes; use a model with a head for this data (or the probe objective)"
            )

    @functools.cached_property
    def site_units(self) -> dict[str, str]:
        """Each site's unit at the bench's granularity (grouped once: the trace and granularity are fixed)."""
        return group_sites(self.model.net, self.trace, self.granularity, self.groups)

    @property
    def units(self) -> list[str]:
        """The unit names in network order, at the bench's granularity."""
        return list(dict.fromkeys(self.site_units.values()))

    @property
    def families(self) -> dict[str, str]:
        """Each unit's activation family (``relu``, ``silu``, ``gelu``, ``gelu_tanh``), in network order."""
        return unit_families(self.trace, self.site_units)

    @property
    def device_label(self) -> str:
        if self.device.type == "cuda":
            return f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        return f"cpu ({torch.get_num_threads()} threads)"

    def meta(self) -> dict[str, Any]:
        """What a study records about the model and data it was created with (its identity among them)."""
        return {
            "fingerprint": self.trace.fingerprint,
            "weights_fingerprint": self.weights_fingerprint,
            "input_shape": list(self.trace.input_shape or ()),
            "model_class": type(self.model.net).__name__,
            "model": self.model.describe(),
            "data": self.data.describe(),
            "n_sites": len(self.trace.sites),
            **({"families": families} if set((families := self.families).values()) != {"relu"} else {}),
        }

    def check_identity(self, meta: Mapping[str, Any], study: str) -> None:
        """Refuse to score for ``study`` with another architecture, other weights or other data."""
        problems = []
        if meta.get("fingerprint") and meta["fingerprint"] != self.trace.fingerprint:
            problems.append("the model applies ReLU at other places (another architecture)")
        if meta.get("weights_fingerprint") and meta["weights_fingerprint"] != self.weights_fingerprint:
            problems.append(
                "the model's weights differ (a checkpoint replaced on disk, or a model class whose weights "
                "do not follow torch's seed)"
            )
        recorded = (meta.get("data") or {}).get("fingerprint")
        if recorded and recorded != self.data.fingerprint:
            problems.append("the data differs (another dataset, split seed, fractions or files)")
        if problems:
            raise InputError(identity_problem(problems, study))

    def evaluator(self, split: str = "val", objectives: Sequence[Objective] | None = None) -> Evaluator:
        """An evaluator on ``split`` (val for studies; test only for the final report), built once."""
        objectives = list(objectives) if objectives is not None else list(self.spec.objectives)
        key = f"{split}:{[repr(o) for o in objectives]}"
        if key not in self._evaluators:
            val_x, val_y = self.samples(split)
            needs_train = any(o.needs_train for o in objectives)
            train = self.samples("train") if needs_train else None
            data = EvalData(val_x, val_y, *(train or (None, None)), class_names=self.data.classes)
            target = EvalTarget(
                self.model.net,
                self.normalize,
                self.num_classes,
                device=self.device,
                precision=self.spec.run.precision,
                batch_size=self.batch_size,
            )
            self._evaluators[key] = Evaluator(target, data, objectives)
        return self._evaluators[key]

    def samples(self, split: str) -> tuple[Samples, torch.Tensor]:
        """A split's rows served on the bench's device a batch at a time, and its labels there."""
        resident = self.spec.run.data_on_gpu_mb
        return self.data.samples(split, device=self.device, resident_mb=resident)  # type: ignore[arg-type]

    def close(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
