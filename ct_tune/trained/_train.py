"""Trained CT: CT's betas and c learned by gradient instead of searched, as the CT authors now do.

``train_ct`` freezes the backbone and trains one beta and one c per unit (granularity ``global``,
``stage``, ``block``, ``site``) or per channel of every ReLU's input (``channel``, what the authors
train), on the train split, with the objective's head: for ``probe`` a linear layer on the probe's
features, trained jointly (Adam, ``head_lr``); for ``accuracy`` the model's own classifier, frozen with
the rest of the network (the profile must reproduce on a fresh copy of the model). The defaults are
the authors': beta 0.8, c 0.5, Adam lr 0.1 for CT and 1e-3 for the head, 20 epochs, batch 32, the
learning rates divided by 10 at epoch 10.

Range, by construction (no clamping, so no gradient is cut off):
    beta = BETA_LOW + (BETA_HIGH - BETA_LOW) * sigmoid(theta),   c = sigmoid(phi)
so beta stays in [BETA_LOW, BETA_HIGH] = [1e-3, 1 - 1e-4] inside (0, 1], and c in [0, 1], whatever the
optimiser does, in float32 too (a plain ``sigmoid(theta)`` rounds to exactly 1 above theta ~ 17, where
1 / (1 - beta) is infinite). A trained beta is therefore strictly below 1: exact ReLU (beta = 1) stays
what the profile format and the activation give it (an untrained unit, a baseline), never a trained value.

After every epoch the current values are frozen into a profile and scored on val exactly as a study
trial scores it (the objective's own evaluation: a fresh L-BFGS probe, or the classifier's accuracy);
the best epoch's profile is kept (early stopping: ``patience`` epochs without a better val score end
training). The scoring runs the same per-channel code (``ct_tune.steering.ChannelCT``) that
``apply_profile`` runs, so the exported profile applied to a fresh model reproduces the val score
exactly. The ReLU baseline is scored first, on the same val split, for comparison.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ct_tune._errors import InputError
from ct_tune.search._bench import Bench
from ct_tune.search._spec import StrictSpec, describe_validation_error, spec_from_dict
from ct_tune.steering import BetaProfile, ChannelCT, SteeringHandle, channel_dim, steer_traced

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationError, model_validator
from torch import nn

__all__ = [
    "BETA_HIGH",
    "BETA_LOW",
    "TrainCTSettings",
    "TrainCTSpec",
    "TrainedCT",
    "log_trained_ct",
    "run_train_ct",
    "train_ct",
    "tune_train_ct",
]

logger = logging.getLogger(__name__)

BETA_LOW = 1e-3
BETA_HIGH = 1.0 - 1e-4
TRAIN_GRANULARITIES = ("global", "stage", "block", "site", "channel")
TRAINABLE_OBJECTIVES = ("probe", "accuracy")


class TrainCTSettings(StrictSpec):
    """How CT is trained (a spec's ``train:`` section); every default is the CT authors'."""

    granularity: Literal["global", "stage", "block", "site", "channel"] = "channel"
    lr: float = Field(default=0.1, gt=0)  # Adam, CT parameters
    head_lr: float = Field(default=1e-3, gt=0)  # Adam, the probe's linear head
    init_beta: float = Field(default=0.8, ge=BETA_LOW, le=BETA_HIGH)
    init_c: float = Field(default=0.5, gt=0, lt=1)
    train_c: bool = True  # False: c stays init_c
    epochs: int = Field(default=20, ge=1)
    lr_step: int | None = Field(default=10, ge=1)  # epoch after which both learning rates are multiplied ...
    lr_decay: float = Field(default=0.1, gt=0, le=1)  # ... by this
    batch_size: int = Field(default=32, ge=1)
    patience: int | None = Field(default=None, ge=1)  # epochs without a better val score before stopping
    seed: int = 0  # head initialisation and batch order

    @classmethod
    def parse(cls, data: Mapping[str, Any] | None, *, source: str = "settings") -> TrainCTSettings:
        """Settings from a mapping; a bad value is one ``InputError`` naming ``train.<field>``."""
        if data is not None and not isinstance(data, Mapping):
            raise InputError(f"{source}: the train section is a mapping (lr:, epochs:, ...); got {data!r}")
        try:
            return cls.model_validate(dict(data or {}))
        except ValidationError as error:
            raise InputError(f"{source}: {_in_section('train', error)}") from None


def _in_section(section: str, error: ValidationError) -> str:
    """A validation error of a section's own model, its field named as ``section.field``."""
    text = describe_validation_error(error)
    if text.startswith("unknown field '"):
        return f"unknown field '{section}.{text.removeprefix(chr(39).join(['unknown field ', '']))}"
    return f"{section}.{text}"


@dataclass
class TrainedCT:
    """What ``train_ct`` returns: the best epoch's profile, its val score, the curves and the baseline."""

    profile: BetaProfile
    objective: str
    value: float  # val score of ``profile``, as a trial would score it
    baseline: float  # val score of the ReLU baseline (beta = 1 everywhere)
    best_epoch: int
    history: list[dict[str, float]]  # per epoch: epoch, train_loss, train_accuracy, val, lr, beta_mean, c_mean
    settings: TrainCTSettings
    units: int
    parameters: int  # trained CT parameters (betas and c)
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)  # the best epoch's objective result

    def to_dict(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "value": self.value,
            "baseline": self.baseline,
            "gain": self.value - self.baseline,
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.history),
            "granularity": self.settings.granularity,
            "units": self.units,
            "parameters": self.parameters,
            "seconds": self.seconds,
            "settings": self.settings.model_dump(),
            "history": self.history,
            "profile": self.profile.to_dict(),
            "result": self.details,
        }


class _TrainableUnit(ChannelCT):
    """A unit whose betas and c are functions of parameters, recomputed at every call (so they get gradients)."""

    __slots__ = ("phi", "theta")

    def __init__(self, name: str, theta: nn.Parameter, phi: nn.Parameter) -> None:
        self.name, self.theta, self.phi = name, theta, phi

    def values(self) -> tuple[torch.Tensor, torch.Tensor]:
        return BETA_LOW + (BETA_HIGH - BETA_LOW) * torch.sigmoid(self.theta), torch.sigmoid(self.phi)

    def frozen(self) -> ChannelCT:
        """The current values as a fixed unit: what the profile holds and ``apply_profile`` rebuilds."""
        with torch.no_grad():
            beta, c = self.values()
        return ChannelCT(beta.float().cpu(), c.float().cpu(), name=self.name)


class _Counter(ChannelCT):
    """Records a unit's channel count on a forward pass (and behaves as ReLU)."""

    __slots__ = ("counts",)

    def __init__(self, name: str) -> None:
        self.name, self.counts = name, set()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.counts.add(int(x.shape[channel_dim(x)]) if x.dim() >= 2 else 1)
        return torch.relu(x)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def train_ct(
    *,
    model: Mapping[str, Any],
    data: Mapping[str, Any],
    objective: Mapping[str, Any] | str = "probe",
    run: Mapping[str, Any] | None = None,
    settings: TrainCTSettings | Mapping[str, Any] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainedCT:
    """Train CT's parameters on the train split, keep the best val epoch; return its profile and curves.

    ``model`` / ``data`` / ``run`` are the study spec's sections of the same name (the same model and
    split a study would load); ``objective`` is ``probe`` or ``accuracy`` (a name or its spec mapping).
    ``on_epoch`` receives each epoch's row of the history as it is made.
    """
    started = time.perf_counter()
    if not isinstance(settings, TrainCTSettings):
        settings = TrainCTSettings.parse(settings)
    name = objective if isinstance(objective, str) else objective.get("name")
    if name not in TRAINABLE_OBJECTIVES:
        raise InputError(
            f"trained CT trains on the probe (transfer) or accuracy objective, not {name!r}; "
            "search betas for the adversarial objective instead"
        )
    granularity = "site" if settings.granularity == "channel" else settings.granularity
    spec = spec_from_dict(
        {
            "model": dict(model),
            "data": dict(data),
            "search": {"granularity": granularity, "enqueue_baseline": False},
            "objectives": [objective],
            "run": dict(run or {}),
        },
        source="arguments",
    )
    with Bench.open(spec, steer=False) as bench:
        return _train(bench, settings, granularity, on_epoch, started)


def _train(
    bench: Bench,
    settings: TrainCTSettings,
    granularity: str,
    on_epoch: Callable[[dict[str, float]], None] | None,
    started: float,
) -> TrainedCT:
    net, device = bench.model.net, bench.device
    evaluator = bench.evaluator("val")
    objective = bench.spec.objectives[0].name
    handle = steer_traced(net, 1.0, c=0.5, granularity=granularity, trace=bench.trace)
    bench.handle = handle  # closed with the bench
    baseline = evaluator.evaluate()[objective].value
    units = _make_units(handle, bench, settings)
    parameters = [p for unit in units.values() for p in (unit.theta, unit.phi) if p.requires_grad]
    train_x, train_y = bench.data.tensors("train", device=device)  # type: ignore[arg-type]
    target = evaluator.target
    head, features = _head(bench, settings, train_x[: min(len(train_x), 64)])
    groups: list[dict[str, Any]] = [{"params": parameters, "lr": settings.lr}]
    if head is not None:
        groups.append({"params": list(head.parameters()), "lr": settings.head_lr})
    optimizer = torch.optim.Adam(groups)
    milestones = [settings.lr_step] if settings.lr_step and settings.lr_step < settings.epochs else []
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=settings.lr_decay)
    generator = torch.Generator().manual_seed(settings.seed)

    history: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, ChannelCT], dict[str, Any]] | None = None
    frozen_weights = [p for p in net.parameters() if p.requires_grad]
    for p in frozen_weights:
        p.requires_grad_(False)  # the backbone stays as it is: no weight gradients computed at all
    try:
        for epoch in range(1, settings.epochs + 1):
            handle.update(units)  # type: ignore[arg-type]
            lr = optimizer.param_groups[0]["lr"]
            loss_sum, hits, seen = 0.0, 0, 0
            order = torch.randperm(len(train_x), generator=generator).to(device)
            for start in range(0, len(order), settings.batch_size):
                index = order[start : start + settings.batch_size]
                x, y = train_x[index], train_y[index]
                logits = head(features(target, x)) if head is not None else target.logits(x)
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += float(loss.detach()) * len(y)
                hits += int((logits.detach().argmax(1) == y).sum())
                seen += len(y)
            scheduler.step()
            frozen = {unit: trainable.frozen() for unit, trainable in units.items()}
            handle.update(frozen)  # type: ignore[arg-type]
            result = evaluator.evaluate()[objective]
            betas = torch.cat([value.values()[0] for value in frozen.values()])
            cs = torch.cat([value.values()[1] for value in frozen.values()])
            row = {
                "epoch": float(epoch),
                "train_loss": loss_sum / max(1, seen),
                "train_accuracy": hits / max(1, seen),
                "val": result.value,
                "lr": lr,
                "beta_mean": float(betas.double().mean()),
                "beta_min": float(betas.min()),
                "beta_max": float(betas.max()),
                "c_mean": float(cs.double().mean()),
            }
            history.append(row)
            logger.debug("epoch %d: train loss %.4f, val %s %.4f", epoch, row["train_loss"], objective, result.value)
            if on_epoch is not None:
                on_epoch(row)
            if best is None or result.value > best[0]:
                best = (result.value, epoch, frozen, result.to_dict())
            elif settings.patience and epoch - best[1] >= settings.patience:
                break
    finally:
        for p in frozen_weights:
            p.requires_grad_(True)
    assert best is not None
    value, best_epoch, best_units, details = best
    handle.update(best_units)  # type: ignore[arg-type]
    profile = handle.profile(
        strategy="trained",
        objective=objective,
        val=value,
        baseline=baseline,
        best_epoch=best_epoch,
        settings=settings.model_dump(),
        trained_on={"model": bench.model.describe(), "data": bench.data.describe()},
    )
    return TrainedCT(
        profile=profile,
        objective=objective,
        value=value,
        baseline=baseline,
        best_epoch=best_epoch,
        history=history,
        settings=settings,
        units=len(units),
        parameters=sum(p.numel() for unit in units.values() for p in (unit.theta, unit.phi)),
        seconds=time.perf_counter() - started,
        details=details,
    )


def _make_units(handle: SteeringHandle, bench: Bench, settings: TrainCTSettings) -> dict[str, _TrainableUnit]:
    """One trainable unit per unit of the handle: a vector per channel (``channel``), else one value."""
    sizes = dict.fromkeys(handle.units, 1)
    if settings.granularity == "channel":
        counters = {unit: _Counter(unit) for unit in handle.units}
        handle.update(counters)  # type: ignore[arg-type]
        from ct_tune.search._bench import example_input

        with torch.no_grad():
            bench.model.net(bench.normalize(example_input(bench.data, bench.device)))
        for unit, counter in counters.items():
            if len(counter.counts) != 1:
                raise InputError(f"ReLU site {unit!r} is called with {sorted(counter.counts)} channels; use site")
            sizes[unit] = counter.counts.pop()
    theta0 = _logit((settings.init_beta - BETA_LOW) / (BETA_HIGH - BETA_LOW))
    phi0 = _logit(settings.init_c)
    units = {}
    for unit, size in sizes.items():
        theta = nn.Parameter(torch.full((size,), theta0, device=bench.device))
        phi = nn.Parameter(torch.full((size,), phi0, device=bench.device), requires_grad=settings.train_c)
        units[unit] = _TrainableUnit(unit, theta, phi)
    return units


def _head(
    bench: Bench, settings: TrainCTSettings, sample: torch.Tensor
) -> tuple[nn.Module | None, Callable[[Any, torch.Tensor], torch.Tensor]]:
    """The probe's trainable linear head and its feature function; ``None`` for accuracy (the model's classifier)."""
    from ct_tune.objectives._probe import FeatureTap, default_feature_layer

    spec = bench.spec.objectives[0]
    if spec.name != "probe":
        return None, lambda target, x: target.logits(x)
    net = bench.model.net
    tap = FeatureTap(net, getattr(spec, "feature_layer", None) or default_feature_layer(net))
    target = bench.evaluator("val").target
    with torch.no_grad():
        width = tap.features(target, sample).shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        head = nn.Linear(width, bench.num_classes).to(bench.device)
    return head, tap.features


# ------------------------------------------------------------------------------------------------------
# A spec file, and MLflow
SPEC_SECTIONS = ("name", "model", "data", "objective", "objectives", "run", "train", "tune", "storage", "tracking_uri")


class _Range(StrictSpec):
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if not self.low < self.high:
            raise ValueError(f"low must be below high; got {self.low} and {self.high}")
        return self


class TuneSpec(StrictSpec):
    """An Optuna study over trained CT's own settings (a spec's ``tune:`` section): the settings named here
    are searched, the others stay as in ``train:``. Each trial is one training, scored by its best val epoch."""

    n_trials: int = Field(default=8, ge=1)
    seed: int = 0  # TPE's seed
    lr: _Range | None = None
    head_lr: _Range | None = None
    init_beta: _Range | None = None
    epochs: _Range | None = None  # integers
    granularity: list[Literal["global", "stage", "block", "site", "channel"]] | None = Field(default=None, min_length=1)

    def suggest(self, trial: Any, base: TrainCTSettings) -> TrainCTSettings:
        """The settings of one trial (``trial`` is an ``optuna.Trial``)."""
        values: dict[str, Any] = {}
        for name in ("lr", "head_lr", "init_beta"):
            box = getattr(self, name)
            if box is not None:
                values[name] = trial.suggest_float(name, box.low, box.high, log=box.log)
        if self.epochs is not None:
            values["epochs"] = trial.suggest_int("epochs", int(self.epochs.low), int(self.epochs.high))
        if self.granularity is not None:
            values["granularity"] = trial.suggest_categorical("granularity", list(self.granularity))
        return TrainCTSettings.parse({**base.model_dump(), **values})


@dataclass(frozen=True)
class TrainCTSpec:
    """A ``ct-tune train-ct`` spec: a study spec's model / data / run sections, one objective, ``train:``."""

    name: str
    model: dict[str, Any]
    data: dict[str, Any]
    objective: dict[str, Any] | str
    run: dict[str, Any]
    settings: TrainCTSettings
    tracking_uri: str | None = None
    tune: TuneSpec | None = None
    storage: str | None = None  # the Optuna storage of ``tune`` (default as for studies)

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "spec", overrides: Mapping[str, Any] | None = None) -> TrainCTSpec:
        """Check every section before anything runs (one ``InputError`` line naming the field)."""
        if not isinstance(data, dict):
            raise InputError(f"{source}: a train-ct spec is a YAML mapping (model:, data:, train:, ...)")
        unknown = [key for key in data if key not in SPEC_SECTIONS]
        if unknown:
            raise InputError(
                f"{source}: unknown section {unknown[0]!r}; a train-ct spec has {', '.join(SPEC_SECTIONS)}"
            )
        if "model" not in data:
            raise InputError(f"{source}: model: required section is missing")
        if "objective" in data and "objectives" in data:
            raise InputError(f"{source}: give objective or objectives, not both")
        objectives = data.get("objectives", [data.get("objective", "probe")])
        if not isinstance(objectives, list) or len(objectives) != 1:
            raise InputError(f"{source}: trained CT trains on one objective (probe or accuracy); got {objectives!r}")
        train = {**(data.get("train") or {}), **{k: v for k, v in (overrides or {}).items() if v is not None}}
        settings = TrainCTSettings.parse(train, source=source)
        objective = objectives[0]
        name = objective if isinstance(objective, str) else (objective or {}).get("name")
        if name not in TRAINABLE_OBJECTIVES:
            raise InputError(f"{source}: objective {name!r} cannot be trained on; use probe (transfer) or accuracy")
        tune = None
        if data.get("tune") is not None:
            try:
                tune = TuneSpec.model_validate(data["tune"])
            except ValidationError as error:
                raise InputError(f"{source}: {_in_section('tune', error)}") from None
        granularity = "site" if settings.granularity == "channel" else settings.granularity
        checked = spec_from_dict(
            {
                "model": data["model"],
                "data": data.get("data") or {},
                "search": {"granularity": granularity, "enqueue_baseline": False},
                "objectives": [objective],
                "run": data.get("run") or {},
            },
            source=source,
        )
        return cls(
            name=str(data.get("name") or "train-ct"),
            model=checked.model.model_dump(exclude_defaults=True),
            data=checked.data.model_dump(exclude_defaults=True),
            objective=checked.objectives[0].model_dump(exclude_defaults=True, exclude={"direction"}) | {"name": name},
            run=checked.run.model_dump(exclude_defaults=True),
            settings=settings,
            tracking_uri=data.get("tracking_uri"),
            tune=tune,
            storage=data.get("storage"),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, overrides: Mapping[str, Any] | None = None) -> TrainCTSpec:
        from ct_tune.search._spec import parse_yaml

        path = Path(path)
        if not path.is_file():
            raise InputError(f"train-ct spec {path} does not exist; give the path of a YAML file")
        return cls.from_dict(parse_yaml(path), source=str(path), overrides=overrides)

    def identity(self) -> dict[str, Any]:
        """Everything the trained profile depends on (a pipeline reuses a profile made with the same)."""
        return {
            "model": self.model,
            "data": self.data,
            "objective": self.objective,
            "run": self.run,
            "settings": self.settings.model_dump(),
        }

    def train(self, *, on_epoch: Callable[[dict[str, float]], None] | None = None) -> TrainedCT:
        return train_ct(
            model=self.model,
            data=self.data,
            objective=self.objective,
            run=self.run,
            settings=self.settings,
            on_epoch=on_epoch,
        )


def run_train_ct(
    spec: TrainCTSpec,
    *,
    out: str | os.PathLike[str] | None = None,
    tracking_uri: str | None = None,
    track: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """What ``ct-tune train-ct`` does: train, write the profile to ``out``, log the run to MLflow.

    The MLflow store is opened before training (an unreachable one fails in seconds, not after it);
    the profile is written atomically, after training, so a failed run leaves no file behind.
    """
    from ct_tune.stores import redact, resolve_tracking_uri
    from ct_tune.tracking import Tracker

    tracker = Tracker(resolve_tracking_uri(tracking_uri, spec.tracking_uri)) if track else None
    result = spec.train(on_epoch=on_epoch)
    payload = result.to_dict()
    if out is not None:
        payload["profile_path"] = str(result.profile.save(out))
    if tracker is not None:
        payload["mlflow"] = {
            **log_trained_ct(result, name=spec.name, tracker=tracker),
            "tracking_uri": redact(tracker.tracking_uri),
        }
    return payload


def log_trained_ct(result: TrainedCT, *, name: str, tracker: Any) -> dict[str, str]:
    """Log a training as its own MLflow run (experiment ``ct-tune/<name>``): settings as params, the loss
    and val curves as per-epoch metrics, the profile as an artifact, the betas per unit as a figure."""
    from ct_tune.tracking import beta_distribution_figure

    experiment_id = tracker.experiment_id(name, create=True)
    run = tracker.client.create_run(
        experiment_id,
        run_name=f"trained-{result.settings.granularity}",
        tags={"ct_tune.command": "train-ct", "ct_tune.strategy": "trained", "ct_tune.objective": result.objective},
    )
    run_id = run.info.run_id
    history = [(key, row[key], int(row["epoch"])) for row in result.history for key in row if key != "epoch"]
    tracker.log(
        run_id,
        params={**result.settings.model_dump(), "objective": result.objective, "units": result.units},
        metrics={
            result.objective: result.value,
            "baseline": result.baseline,
            "gain": result.value - result.baseline,
            "best_epoch": result.best_epoch,
            "parameters": result.parameters,
            "seconds": result.seconds,
        },
        history=history,
    )
    tracker.client.log_dict(run_id, result.profile.to_dict(), "profile.json")
    channels = result.profile.channels or {unit: {"beta": [beta]} for unit, beta in result.profile.betas.items()}
    title = f"trained betas ({result.settings.granularity}), val {result.objective} {result.value:.4f}"
    figure = beta_distribution_figure({unit: entry["beta"] for unit, entry in channels.items()}, title=title)
    tracker.log_figure(run_id, figure, "beta_distribution.png")
    tracker.client.set_terminated(run_id, "FINISHED")
    return {"run_id": run_id, "experiment_id": experiment_id}


def score_trained_on_test(spec: TrainCTSpec, profile: BetaProfile) -> dict[str, Any]:
    """A trained profile scored once on the test split (a pipeline's final report), with its objective."""
    checked = spec_from_dict(
        {
            "model": spec.model,
            "data": spec.data,
            "search": {"granularity": profile.unit_granularity, "enqueue_baseline": False},
            "objectives": [spec.objective],
            "run": spec.run,
        },
        source="arguments",
    )
    with Bench.open(checked) as bench:
        assert bench.handle is not None
        if profile.fingerprint and profile.fingerprint != bench.trace.fingerprint:
            raise InputError(f"the trained profile was made on a model with other ReLU calls ({profile.model})")
        bench.handle.update(profile.steering_values())
        return {name: result for name, result in bench.evaluator("test").evaluate().items()}


def tune_train_ct(
    spec: TrainCTSpec,
    *,
    storage: str | None = None,
    tracking_uri: str | None = None,
    out: str | os.PathLike[str] | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Search trained CT's own settings with Optuna (TPE, seeded), one training per trial, each logged to
    MLflow as its own run; resumable (the study ``<name>.tune`` in the Optuna storage runs until it holds
    ``n_trials`` finished trials). The best trial's profile is written to ``out``.

    Both the settings and the epoch are chosen on val: the val score of the best trial is optimistic, and
    only a test report (``kind: train`` in a pipeline) says what it is worth.
    """
    from ct_tune.stores import open_optuna_storage, redact, resolve_storage, resolve_tracking_uri
    from ct_tune.tracking import Tracker

    import optuna

    if spec.tune is None:
        raise InputError("the spec has no tune: section (n_trials, and ranges for lr, init_beta, epochs, granularity)")
    tell = say or (lambda _text: None)
    tune = spec.tune
    tracker = Tracker(resolve_tracking_uri(tracking_uri, spec.tracking_uri))
    storage_url = resolve_storage(storage, spec.storage)
    name = f"{spec.name}.tune"
    study = optuna.create_study(
        study_name=name,
        storage=open_optuna_storage(storage_url),
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=tune.seed, n_startup_trials=min(4, tune.n_trials)),
        load_if_exists=True,
    )
    granularity = "site" if spec.settings.granularity == "channel" else spec.settings.granularity
    checked = spec_from_dict(
        {
            "model": spec.model,
            "data": spec.data,
            "search": {"granularity": granularity, "enqueue_baseline": False},
            "objectives": [spec.objective],
            "run": spec.run,
        },
        source="arguments",
    )
    with Bench.open(checked, steer=False) as bench:  # model and data loaded once for every trial
        while sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) < tune.n_trials:
            trial = study.ask()
            settings = tune.suggest(trial, spec.settings)
            started = time.perf_counter()
            try:
                unit_granularity = "site" if settings.granularity == "channel" else settings.granularity
                result = _train(bench, settings, unit_granularity, None, started)
            except BaseException:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise
            finally:
                bench.close()  # the trial's steering handle; the next trial attaches its own
            logged = log_trained_ct(result, name=spec.name, tracker=tracker)
            tracker.log(logged["run_id"], tags={"optuna.study_name": name, "optuna.trial_number": str(trial.number)})
            trial.set_user_attr("mlflow_run_id", logged["run_id"])
            trial.set_user_attr("profile", result.profile.to_dict())
            trial.set_user_attr("baseline", result.baseline)
            study.tell(trial, result.value)
            tell(f"trial {trial.number}: {dict(trial.params)} -> val {result.objective} {result.value:.4f}")
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(finished, key=lambda t: (t.value, -t.number))
    payload: dict[str, Any] = {
        "study": name,
        "storage": redact(storage_url),
        "tracking_uri": redact(tracker.tracking_uri),
        "objective": checked.objectives[0].name,
        "baseline": best.user_attrs["baseline"],
        "best": {"number": best.number, "params": dict(best.params), "value": best.value},
        "trials": [{"number": t.number, "params": dict(t.params), "value": t.value} for t in finished],
    }
    if out is not None:
        payload["profile_path"] = str(BetaProfile.from_dict(best.user_attrs["profile"]).save(out))
    return payload
