"""The paper's transfer protocol: a linear probe on frozen features of the steered backbone.

The paper trains a probe for 20 epochs with Adam for every beta. Here the features of the train and
val splits are extracted once per trial (one pass each) and an L2-regularised multinomial logistic
regression is fitted on the feature tensors with full-batch L-BFGS from zeros: deterministic, and a
fraction of the cost of the feature pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar, Literal

from ct_tune._errors import InputError
from ct_tune._specs import StrictSpec
from ct_tune.objectives._base import Direction, ObjectiveResult, ReportFn, fraction, per_class_accuracy
from ct_tune.objectives._target import EvalData, EvalTarget
from ct_tune.steering import split, stack

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn


class _Captured(Exception):
    """Raised by the feature hook to stop the forward pass once the features are in hand."""


def default_feature_layer(net: nn.Module) -> str:
    """The final classifier: the last ``nn.Linear`` registered in the network."""
    linears = [path for path, module in net.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise InputError(
            f"{type(net).__name__} has no nn.Linear classifier to take probe features from; "
            "set the probe's feature_layer to a module path"
        )
    return linears[-1]


class FeatureTap:
    """Reads the input of one module and stops the forward pass there (the rest is not needed)."""

    def __init__(self, net: nn.Module, layer: str) -> None:
        try:
            self.module = net.get_submodule(layer)
        except AttributeError:
            raise InputError(f"feature_layer {layer!r} is not a module of {type(net).__name__}") from None
        self.layer = layer

    def features(self, target: EvalTarget, x: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []

        def hook(_module: nn.Module, args: tuple) -> None:
            captured.append(args[0].flatten(1).float())
            raise _Captured

        handle = self.module.register_forward_pre_hook(hook)
        try:
            target.logits(x)
        except _Captured:
            pass
        finally:
            handle.remove()
        if not captured:
            raise InputError(f"feature_layer {self.layer!r} is never called in the forward pass; choose another")
        return captured[0]


@dataclass
class LinearProbe:
    weight: torch.Tensor  # (features, classes), on standardised features
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    iterations: int

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return ((features.to(self.mean.dtype) - self.mean) / self.std) @ self.weight + self.bias


def fit_linear_probe(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, *, l2: float, max_iter: int
) -> LinearProbe:
    """Minimise mean cross-entropy + l2/2 * ||W||^2 on standardised features with L-BFGS, in float64.

    The problem is strictly convex, so a fit run to its optimum depends on the features only, not on the
    path: stopped early (gradient entries below 1e-4, float32), the quickstart's ReLU baseline moved by
    up to 0.2 points when its features were perturbed by one part in a million (what another thread count
    or CPU can do to a reduction); run to 1e-6 in float64 it stayed at 0.879 (about 1.7x the iterations,
    still small next to a feature pass)."""
    features = features.double()
    mean = features.mean(0)
    std = features.std(0).clamp_min(1e-6)
    z = (features - mean) / std
    weight = torch.zeros(z.shape[1], num_classes, device=z.device, dtype=z.dtype, requires_grad=True)
    bias = torch.zeros(num_classes, device=z.device, dtype=z.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-6,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z @ weight + bias, labels) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    iterations = optimizer.state[weight].get("n_iter", 0)  # LBFGS keeps its state under the first param
    return LinearProbe(weight.detach(), bias.detach(), mean, std, int(iterations))


class ProbeObjective(StrictSpec):
    """Val accuracy of a linear probe fitted on train features of the (steered) network."""

    name: Literal["probe"] = "probe"
    direction: Direction = "maximize"
    needs_train: ClassVar[bool] = True
    feature_layer: str | None = None  # module whose *input* is the feature; default: the final classifier
    l2: float = Field(default=1e-3, ge=0)
    max_iter: int = Field(default=300, gt=0)  # the quickstart's baseline converges in about 140

    def evaluate(self, target: EvalTarget, data: EvalData, report: ReportFn | None = None) -> ObjectiveResult:
        if data.train_x is None or data.train_y is None:
            raise InputError("the probe objective needs the train split's tensors")
        start = time.perf_counter()
        clock_start = target.clock.seconds
        tap = FeatureTap(target.net, self.feature_layer or default_feature_layer(target.net))
        train_features = self._features(target, tap, data.train_x)
        fit_start = time.perf_counter()
        probe = fit_linear_probe(train_features, data.train_y, target.num_classes, l2=self.l2, max_iter=self.max_iter)
        fit_seconds = time.perf_counter() - fit_start

        y = data.val_y
        hits = torch.zeros(len(y), dtype=torch.bool, device=y.device)
        seen = [0]

        def step(batch: slice) -> None:
            with torch.inference_mode(), target.clock.measure():
                features = tap.features(target, data.val_x[batch])
            hits[batch] = probe.logits(features).argmax(1) == y[batch]
            seen[0] = batch.stop
            if report is not None:
                report(fraction(hits[: batch.stop]), batch.stop)

        target.for_batches(len(y), step)
        return self._result(
            hits,
            y,
            tap,
            train_features,
            probe,
            fit_seconds,
            target,
            time.perf_counter() - start,
            target.clock.seconds - clock_start,
            len(data.train_y),
        )

    def evaluate_many(self, target: EvalTarget, data: EvalData, profiles: int) -> list[ObjectiveResult]:
        """One result per profile of a net steered with ``profiles`` at once (``update_batched``): every
        feature pass serves all of them, then one probe is fitted per profile (the same fit as
        ``evaluate``, so a batched trial scores what a single one would)."""
        if data.train_x is None or data.train_y is None:
            raise InputError("the probe objective needs the train split's tensors")
        start = time.perf_counter()
        clock_start = target.clock.seconds
        tap = FeatureTap(target.net, self.feature_layer or default_feature_layer(target.net))
        train_features = self._features(target, tap, data.train_x, profiles)  # (profiles, n, d)
        fit_start = time.perf_counter()
        probes = [
            fit_linear_probe(f, data.train_y, target.num_classes, l2=self.l2, max_iter=self.max_iter)
            for f in train_features
        ]
        fit_seconds = (time.perf_counter() - fit_start) / profiles
        y = data.val_y
        hits = torch.zeros(profiles, len(y), dtype=torch.bool, device=y.device)

        def step(batch: slice) -> None:
            with torch.inference_mode(), target.clock.measure():
                features = split(tap.features(target, stack(data.val_x[batch], profiles)), profiles)
            for i, probe in enumerate(probes):
                hits[i, batch] = probe.logits(features[i]).argmax(1) == y[batch]

        target.for_batches(len(y), step, copies=profiles)
        seconds = (time.perf_counter() - start) / profiles
        compute = (target.clock.seconds - clock_start) / profiles
        return [
            self._result(
                hits[i], y, tap, train_features[i], probes[i], fit_seconds, target, seconds, compute, len(data.train_y)
            )
            for i in range(profiles)
        ]

    def _result(
        self,
        hits: torch.Tensor,
        y: torch.Tensor,
        tap: FeatureTap,
        train_features: torch.Tensor,
        probe: LinearProbe,
        fit_seconds: float,
        target: EvalTarget,
        seconds: float,
        compute_seconds: float,
        n_train: int,
    ) -> ObjectiveResult:
        details = {
            "n": len(y),
            "n_train": n_train,
            "feature_layer": tap.layer,
            "feature_dim": int(train_features.shape[-1]),
            "probe_iterations": probe.iterations,
            "probe_fit_seconds": fit_seconds,
            "per_class": per_class_accuracy(hits, y, target.num_classes),
        }
        return ObjectiveResult(self.name, fraction(hits), details, seconds, compute_seconds, correct=hits)

    @staticmethod
    def _features(target: EvalTarget, tap: FeatureTap, x: torch.Tensor, profiles: int = 1) -> torch.Tensor:
        """Features of every sample: (n, d), or (profiles, n, d) for a net steered with K profiles."""
        parts: list[torch.Tensor] = []

        def step(batch: slice) -> None:
            with torch.inference_mode(), target.clock.measure():
                features = tap.features(target, stack(x[batch], profiles))
                parts.append(split(features, profiles) if profiles > 1 else features)

        target.for_batches(len(x), step, copies=profiles)
        return torch.cat(parts, dim=1 if profiles > 1 else 0).clone()  # clone: out of inference mode (autograd)
