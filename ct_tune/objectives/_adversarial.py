"""Robust accuracy under a white-box attack on the *steered* model, in pixel space.

PGD (L-inf or L2) with random starts and restarts. Inputs live in [0, 1]; normalisation is part of
the differentiable forward (``EvalTarget.logits``), so the attack sees exactly what the study scores
and differentiates through the CT activations, not through a ReLU copy. A sample counts as robust
only if no iterate of any restart is misclassified; samples the model already gets wrong are not
attacked. The attacked subset of val is fixed by a seed, so every trial faces the same samples.

AutoAttack (``attack="autoattack"``) runs through torchattacks when it is installed
(``pip install 'ct-tune[attacks]'``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar, Literal

from ct_tune._errors import InputError
from ct_tune.objectives._base import ObjectiveResult, ReportFn, per_class_accuracy
from ct_tune.objectives._target import EvalData, EvalTarget

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("linf", "l2")
ATTACKS = ("pgd", "autoattack")


def fixed_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices of a seeded, class-stratified subset of ``n`` samples (all of them if fewer)."""
    total = len(labels)
    if n >= total:
        return torch.arange(total, device=labels.device)
    from sklearn.model_selection import train_test_split

    index = np.arange(total)
    y = labels.cpu().numpy()
    try:
        chosen, _ = train_test_split(index, train_size=n, stratify=y, random_state=seed)
    except ValueError:  # a class too small to stratify: a plain seeded sample
        chosen = np.random.default_rng(seed).choice(total, size=n, replace=False)
    return torch.as_tensor(np.sort(chosen), device=labels.device)


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def _project(delta: torch.Tensor, x: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Back into the eps ball around x, then into the pixel range [0, 1]."""
    inside = delta.clamp(-eps, eps) if norm == "linf" else delta * (eps / _per_sample_norm(delta)).clamp(max=1.0)
    return (x + inside).clamp(0.0, 1.0) - x


def _random_start(x: torch.Tensor, norm: str, eps: float, generator: torch.Generator) -> torch.Tensor:
    if norm == "linf":
        delta = (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * eps
    else:
        direction = torch.randn(x.shape, generator=generator, device=x.device)
        radius = torch.rand(len(x), generator=generator, device=x.device).view(-1, *([1] * (x.dim() - 1)))
        delta = direction / _per_sample_norm(direction) * radius * eps
    return _project(delta, x, norm, eps)


def pgd_attack(
    target: EvalTarget,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float,
    steps: int,
    step_size: float,
    random_start: bool,
    restarts: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attack one batch. Returns (adversarial inputs, robust mask); fooled samples keep their first hit."""
    x_adv = x.clone()
    robust = torch.ones(len(x), dtype=torch.bool, device=x.device)
    if eps == 0 or steps == 0:
        with torch.no_grad(), target.clock.measure():
            robust &= target.logits(x).argmax(1) == y
        return x_adv, robust
    for restart in range(restarts):
        alive = robust.nonzero().squeeze(1)
        if len(alive) == 0:
            break
        xs, ys = x[alive], y[alive]
        use_random = random_start or restart > 0
        delta = _random_start(xs, norm, eps, generator) if use_random else torch.zeros_like(xs)
        for step in range(steps + 1):
            delta.requires_grad_(True)
            with torch.enable_grad(), target.clock.measure():
                logits = target.logits(xs + delta)
                fooled = logits.argmax(1) != ys
                if step < steps:
                    loss = F.cross_entropy(logits, ys, reduction="sum")
                    (grad,) = torch.autograd.grad(loss, delta)
            delta = delta.detach()
            if fooled.any():  # record the first misclassified iterate of each sample
                hit = alive[fooled]
                x_adv[hit] = (xs + delta)[fooled]
                robust[hit] = False
                keep = ~fooled
                alive, xs, ys, delta = alive[keep], xs[keep], ys[keep], delta[keep]
                if step < steps:
                    grad = grad[keep]
                if len(alive) == 0:
                    break
            if step == steps:
                x_adv[alive] = xs + delta
                break
            if norm == "linf":
                delta = delta + step_size * grad.sign()
            else:
                delta = delta + step_size * grad / _per_sample_norm(grad)
            delta = _project(delta, xs, norm, eps)
    return x_adv, robust


class _PixelModel(nn.Module):
    """Pixels -> logits as one module (what third-party attack libraries call)."""

    def __init__(self, target: EvalTarget) -> None:
        super().__init__()
        self.target = target
        self.net = target.net  # registered so .eval()/.parameters() reach the real network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.target.logits(x)


@dataclass(frozen=True)
class AdversarialObjective:
    """Robust accuracy on a fixed, seeded subset of val under PGD (or AutoAttack)."""

    name: ClassVar[str] = "adversarial"
    needs_train: ClassVar[bool] = False
    norm: Literal["linf", "l2"] = "linf"
    eps: float = 8 / 255
    steps: int = 10
    step_size: float | None = None  # default 2.5 * eps / steps (Madry et al.)
    random_start: bool = True
    restarts: int = 1
    n: int = 1000
    seed: int = 0
    attack: Literal["pgd", "autoattack"] = "pgd"

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise InputError(f"unknown norm {self.norm!r}; choose one of: {', '.join(NORMS)}")
        if self.attack not in ATTACKS:
            raise InputError(f"unknown attack {self.attack!r}; choose one of: {', '.join(ATTACKS)}")
        if self.eps < 0 or self.steps < 0 or self.restarts < 1 or self.n < 1:
            raise InputError("attack settings need eps >= 0, steps >= 0, restarts >= 1 and n >= 1")

    @property
    def effective_step_size(self) -> float:
        if self.step_size is not None:
            return self.step_size
        return 2.5 * self.eps / max(self.steps, 1)

    def evaluate(self, target: EvalTarget, data: EvalData, report: ReportFn | None = None) -> ObjectiveResult:
        start = time.perf_counter()
        clock_start = target.clock.seconds
        index = fixed_subset(data.val_y, self.n, self.seed)
        x, y = data.val_x[index], data.val_y[index]
        robust = torch.zeros(len(y), dtype=torch.bool, device=y.device)
        clean = torch.zeros_like(robust)
        generator = torch.Generator(device=x.device).manual_seed(self.seed)
        attack_library = self._autoattack(target) if self.attack == "autoattack" else None

        def step(batch: slice) -> None:
            xb, yb = x[batch], y[batch]
            with torch.no_grad(), target.clock.measure():
                correct = target.logits(xb).argmax(1) == yb
            batch_robust = torch.zeros_like(correct)
            attacked = correct.nonzero().squeeze(1)
            if len(attacked):
                if attack_library is not None:
                    with target.clock.measure():
                        x_adv = attack_library(xb[attacked], yb[attacked])
                    with torch.no_grad(), target.clock.measure():
                        batch_robust[attacked] = target.logits(x_adv).argmax(1) == yb[attacked]
                else:
                    _, survived = pgd_attack(
                        target,
                        xb[attacked],
                        yb[attacked],
                        norm=self.norm,
                        eps=self.eps,
                        steps=self.steps,
                        step_size=self.effective_step_size,
                        random_start=self.random_start,
                        restarts=self.restarts,
                        generator=generator,
                    )
                    batch_robust[attacked] = survived
            clean[batch], robust[batch] = correct, batch_robust
            if report is not None:
                report(float(robust[: batch.stop].float().mean()), batch.stop)

        target.for_batches(len(y), step)
        value = float(robust.float().mean())
        details = {
            "robust_accuracy": value,
            "clean_accuracy": float(clean.float().mean()),
            "n": len(y),
            "attack": self.attack,
            "norm": self.norm,
            "eps": self.eps,
            "steps": self.steps,
            "step_size": self.effective_step_size,
            "restarts": self.restarts,
            "per_class": per_class_accuracy(robust, y, target.num_classes),
        }
        return ObjectiveResult(
            self.name, value, details, time.perf_counter() - start, target.clock.seconds - clock_start, correct=robust
        )

    def _autoattack(self, target: EvalTarget):
        try:
            import torchattacks
        except ImportError:
            raise InputError(
                "attack='autoattack' needs torchattacks: pip install 'ct-tune[attacks]' (or use attack='pgd')"
            ) from None
        norm = {"linf": "Linf", "l2": "L2"}[self.norm]
        model = _PixelModel(target).eval()
        return torchattacks.AutoAttack(model, norm=norm, eps=self.eps, n_classes=target.num_classes, seed=self.seed)
