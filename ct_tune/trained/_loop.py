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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ct_tune._errors import InputError
from ct_tune.bench import Bench, BenchSpec, bench_spec
from ct_tune.data import Samples
from ct_tune.objectives import FeatureTap, default_feature_layer
from ct_tune.steering import (
    FAMILIES,
    BetaProfile,
    ChannelCT,
    Family,
    SteeringHandle,
    channel_dim,
    family_named,
    steer_traced,
)
from ct_tune.trained._settings import BETA_HIGH, BETA_LOW, TrainCTSettings, check_trainable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TrainedCT", "train_ct", "train_on_bench"]

logger = logging.getLogger(__name__)


@dataclass
class TrainedCT:
    """What ``train_ct`` returns: the best epoch's profile, its val score, the curves and the baseline."""

    profile: BetaProfile
    objective: str
    value: float  # val score of ``profile``, as a trial would score it
    baseline: float  # val score of the network's own activation (ReLU: beta = 1 everywhere)
    best_epoch: int
    history: list[dict[str, float]]  # per epoch: epoch, train_loss, train_accuracy, val, lr, beta_mean, c_mean
    settings: TrainCTSettings
    units: int
    parameters: int  # trained CT parameters (betas and c)
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)  # the best epoch's objective result

    @property
    def baseline_label(self) -> str:
        """What the baseline is: ReLU, or a SiLU or GELU network's own activation."""
        return "ReLU" if not self.profile.families else "own activation"

    def to_dict(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "value": self.value,
            "baseline": self.baseline,
            "baseline_label": self.baseline_label,
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

    def __call__(self, x: torch.Tensor, family: Family = FAMILIES["relu"]) -> torch.Tensor:
        self.counts.add(int(x.shape[channel_dim(x)]) if x.dim() >= 2 else 1)
        return family.native(x)


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

    Args:
        model: the ``model`` section of a study spec (the same model a study would load).
        data: its ``data`` section (the same split).
        objective: ``probe`` or ``accuracy``, as a name or its spec mapping.
        run: its ``run`` section (device, precision, batch size of the scoring passes).
        settings: ``TrainCTSettings`` or a mapping of its fields (the spec's ``train:``); the CT authors'
            defaults otherwise.
        on_epoch: receives each epoch's row of the history as it is made.
    """
    check_trainable(objective if isinstance(objective, str) else objective.get("name"), "objective")
    spec = bench_spec(model=model, data=data, objectives=[objective], run=run)
    if not isinstance(settings, TrainCTSettings):
        settings = TrainCTSettings.parse(settings)
    return train_on_bench(spec, settings, on_epoch=on_epoch)


def train_on_bench(
    spec: BenchSpec, settings: TrainCTSettings, *, on_epoch: Callable[[dict[str, float]], None] | None = None
) -> TrainedCT:
    """``train_ct`` on a bench spec (its one objective is what is trained on)."""
    started = time.perf_counter()
    with Bench.open(spec, granularity=settings.unit_granularity, steer=False) as bench:
        return train_loaded(bench, settings, on_epoch, started)


@dataclass
class _Training:
    """What one training holds between epochs."""

    handle: SteeringHandle
    units: dict[str, _TrainableUnit]
    head: nn.Module | None
    features: Callable[[Any, torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    train_x: Samples  # the train split, served on the device a batch at a time, in pixel space
    train_y: torch.Tensor


def train_loaded(
    bench: Bench,
    settings: TrainCTSettings,
    on_epoch: Callable[[dict[str, float]], None] | None,
    started: float,
) -> TrainedCT:
    """Train on an open bench (steered here, at the settings' granularity); the bench's handle is replaced."""
    evaluator = bench.evaluator("val")
    objective = bench.spec.objectives[0].name
    bench.close()  # a previous training's handle
    handle = steer_traced(bench.model.net, 1.0, c=None, granularity=settings.unit_granularity, trace=bench.trace)
    handle.update(handle.baselines)  # the network's own activation everywhere (ReLU: beta = 1)
    bench.handle = handle  # closed with the bench
    baseline = evaluator.evaluate()[objective].value
    training = _start(bench, settings, handle)
    history: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, ChannelCT], dict[str, Any]] | None = None
    frozen_weights = [p for p in bench.model.net.parameters() if p.requires_grad]
    for p in frozen_weights:
        p.requires_grad_(False)  # the backbone stays as it is: no weight gradients computed at all
    try:
        for epoch in range(1, settings.epochs + 1):
            row, frozen, result = _epoch(bench, training, settings, epoch)
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
    units = training.units
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


def _start(bench: Bench, settings: TrainCTSettings, handle: SteeringHandle) -> _Training:
    """The trainable units, the head, the optimiser and its schedule, the seeded batch order."""
    units = _make_units(handle, bench, settings)
    parameters = [p for unit in units.values() for p in (unit.theta, unit.phi) if p.requires_grad]
    train_x, train_y = bench.samples("train")
    head, features = _head(bench, settings, train_x[: min(len(train_x), 64)])
    groups: list[dict[str, Any]] = [{"params": parameters, "lr": settings.lr}]
    if head is not None:
        groups.append({"params": list(head.parameters()), "lr": settings.head_lr})
    optimizer = torch.optim.Adam(groups)
    milestones = [settings.lr_step] if settings.lr_step and settings.lr_step < settings.epochs else []
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=settings.lr_decay)
    generator = torch.Generator().manual_seed(settings.seed)
    return _Training(handle, units, head, features, optimizer, scheduler, generator, train_x, train_y)


def _epoch(
    bench: Bench, training: _Training, settings: TrainCTSettings, epoch: int
) -> tuple[dict[str, float], dict[str, ChannelCT], Any]:
    """One pass over the train split, then the frozen values scored on val: (history row, frozen units, result)."""
    training.handle.update(training.units)  # type: ignore[arg-type]
    target = bench.evaluator("val").target
    optimizer, head = training.optimizer, training.head
    lr = optimizer.param_groups[0]["lr"]
    train_x, train_y = training.train_x, training.train_y
    loss_sum, hits, seen = 0.0, 0, 0
    order = torch.randperm(len(train_x), generator=training.generator).to(bench.device)
    for start in range(0, len(order), settings.batch_size):
        index = order[start : start + settings.batch_size]
        x, y = train_x[index], train_y[index]
        logits = head(training.features(target, x)) if head is not None else target.logits(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach()) * len(y)
        hits += int((logits.detach().argmax(1) == y).sum())
        seen += len(y)
    training.scheduler.step()
    frozen = {unit: trainable.frozen() for unit, trainable in training.units.items()}
    training.handle.update(frozen)  # type: ignore[arg-type]
    result = bench.evaluator("val").evaluate()[bench.spec.objectives[0].name]
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
    return row, frozen, result


def _make_units(handle: SteeringHandle, bench: Bench, settings: TrainCTSettings) -> dict[str, _TrainableUnit]:
    """One trainable unit per unit of the handle: a vector per channel (``channel``), else one value."""
    sizes = dict.fromkeys(handle.units, 1)
    if settings.granularity == "channel":
        counters = {unit: _Counter(unit) for unit in handle.units}
        handle.update(counters)  # type: ignore[arg-type]
        with torch.no_grad():
            bench.model.net(bench.example())
        for unit, counter in counters.items():
            if len(counter.counts) != 1:
                raise InputError(f"ReLU site {unit!r} is called with {sorted(counter.counts)} channels; use site")
            sizes[unit] = counter.counts.pop()
    units = {}
    for unit, size in sizes.items():
        init_beta, init_c = settings.start(family_named(handle.families[unit]))
        theta0 = _logit((init_beta - BETA_LOW) / (BETA_HIGH - BETA_LOW))
        phi0 = _logit(init_c)
        theta = nn.Parameter(torch.full((size,), theta0, device=bench.device))
        phi = nn.Parameter(torch.full((size,), phi0, device=bench.device), requires_grad=settings.train_c)
        units[unit] = _TrainableUnit(unit, theta, phi)
    return units


def _head(
    bench: Bench, settings: TrainCTSettings, sample: torch.Tensor
) -> tuple[nn.Module | None, Callable[[Any, torch.Tensor], torch.Tensor]]:
    """The probe's trainable linear head and its feature function; ``None`` for accuracy (the model's classifier)."""
    spec = bench.spec.objectives[0]
    if spec.name != "probe":
        return None, lambda target, x: target.logits(x)
    net = bench.model.net
    tap = FeatureTap(net, spec.feature_layer or default_feature_layer(net))
    target = bench.evaluator("val").target
    with torch.no_grad():
        width = tap.features(target, sample).shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        head = nn.Linear(width, bench.num_classes).to(bench.device)
    return head, tap.features
