"""Robust accuracy under a white-box attack on the *steered* model, in pixel space.

PGD (L-inf or L2) with random starts and restarts. Inputs live in [0, 1]; normalisation is part of
the differentiable forward (``EvalTarget.logits``), so the attack sees exactly what the study scores
and differentiates through the CT activations, not through a ReLU copy. A sample counts as robust
only if no iterate of any restart is misclassified; samples the model already gets wrong are not
attacked. The attacked subset of val is fixed by a seed, so every trial faces the same samples.

AutoAttack (``attack="autoattack"``) is the standard version of Croce & Hein (2020), as their
``autoattack`` package defines it: APGD-CE (no restarts), APGD-T (9 target classes), FAB-T (9 target
classes), each with 100 iterations, then Square (5000 queries), each attack run on the samples the ones
before it left robust. The attacks are torchattacks' (``pip install 'ct-tune[attacks]'``), built here
with the original's settings: torchattacks 3.3's own ``AutoAttack`` class runs them with 10 iterations.
Every setting can be changed (``attacks``, ``steps``, ``restarts``, ``n_queries``,
``n_target_classes``); the run's ``ct_tune.attack`` tag then says ``autoattack-custom``.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Literal

from ct_tune._errors import InputError
from ct_tune._specs import StrictSpec, parse_fraction
from ct_tune.objectives._base import Direction, ObjectiveResult, ReportFn, fraction, per_class_accuracy
from ct_tune.objectives._target import EvalData, EvalTarget

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

PGD_STEPS = 10
# "standard" is the original package's version='standard' for L-inf and L2 (fra31/auto-attack,
# ``AutoAttack.set_version``).
STANDARD_AUTOATTACK: dict[str, Any] = {
    "attacks": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "steps": 100,
    "restarts": 1,
    "n_queries": 5000,
    "n_target_classes": 9,
}


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


AutoAttackName = Literal["apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square"]


class AdversarialObjective(StrictSpec):
    """Robust accuracy on a fixed, seeded subset of val under PGD or AutoAttack (standard by default).

    The chosen attack's defaults are written into the settings when they are made, so that a study's
    ``spec.json`` says what ran; the settings of the other attack are refused."""

    name: Literal["adversarial"] = "adversarial"
    direction: Direction = "maximize"
    needs_train: ClassVar[bool] = False
    attack: Literal["pgd", "autoattack"] = "pgd"
    norm: Literal["linf", "l2"] = "linf"
    eps: float = Field(default=8 / 255, ge=0)  # '8/255' is accepted
    steps: int | None = Field(default=None, ge=0)  # PGD 10; AutoAttack 100 (the original's, for APGD and FAB)
    step_size: float | None = Field(default=None, gt=0)  # PGD only; default 2.5 * eps / steps (Madry et al.)
    random_start: bool = True  # PGD only (APGD always starts at a random point)
    restarts: int = Field(default=1, ge=1)  # PGD; AutoAttack: of apgd-ce, apgd-dlr and fab (the others run once)
    n: int = Field(default=1000, gt=0)
    seed: int = 0
    # AutoAttack only; default the standard four, in order
    attacks: tuple[AutoAttackName, ...] | None = Field(default=None, min_length=1)
    n_queries: int | None = Field(default=None, gt=0)  # AutoAttack's Square; default 5000
    n_target_classes: int | None = Field(default=None, ge=1)  # APGD-T and FAB-T; default 9 (at most classes - 1)

    _fractions = field_validator("eps", "step_size", mode="before")(parse_fraction)

    @model_validator(mode="before")
    @classmethod
    def _attack_defaults(cls, data: Any) -> Any:
        """The chosen attack's defaults written out (PGD's steps; the standard AutoAttack's settings)."""
        if not isinstance(data, dict):
            return data
        filled = dict(data)
        autoattack = filled.get("attack") == "autoattack"
        defaults = STANDARD_AUTOATTACK if autoattack else {"steps": PGD_STEPS}
        for key in ("attacks", "steps", "n_queries", "n_target_classes") if autoattack else ("steps",):
            if filled.get(key) is None:
                filled[key] = defaults[key]
        return filled

    @model_validator(mode="after")
    def _settings_of_its_attack(self) -> AdversarialObjective:
        if self.attack == "pgd":
            given = [key for key in ("attacks", "n_queries", "n_target_classes") if getattr(self, key) is not None]
            if given:
                raise ValueError(f"{given[0]} is an AutoAttack setting; set attack: autoattack or remove it")
        elif self.step_size is not None:
            raise ValueError("step_size is a PGD setting (AutoAttack's APGD sets its own); remove it")
        elif not self.random_start:
            raise ValueError("random_start is a PGD setting (AutoAttack's APGD always starts at random); remove it")
        if self.attacks is not None and len(set(self.attacks)) != len(self.attacks):
            raise ValueError(f"attacks lists an attack twice ({', '.join(self.attacks)}); name each once")
        return self

    @property
    def standard(self) -> bool:
        """AutoAttack exactly as the original's version='standard' defines it."""
        if self.attack != "autoattack":
            return False
        return all(getattr(self, key) == value for key, value in STANDARD_AUTOATTACK.items())

    @property
    def version(self) -> str:
        """What the attack is, in one line (the trial runs' ``ct_tune.attack`` tag)."""
        if self.attack == "pgd":
            return (
                f"pgd-{self.norm} ({self.steps} steps, step size {self.effective_step_size:.4g}, "
                f"{self.restarts} restart(s), random start {'on' if self.random_start else 'off'})"
            )
        from importlib.metadata import PackageNotFoundError, version

        try:
            library = f"torchattacks {version('torchattacks')}"
        except PackageNotFoundError:
            library = "torchattacks (not installed)"
        kind = "autoattack-standard" if self.standard else "autoattack-custom"
        return (
            f"{kind} ({', '.join(self.attacks)}; {self.steps} steps, {self.restarts} restart(s), "
            f"{self.n_queries} queries, {self.n_target_classes} target classes) {library}"
        )

    @property
    def effective_step_size(self) -> float:
        if self.step_size is not None:
            return self.step_size
        return 2.5 * self.eps / max(self.steps, 1)

    def evaluate(self, target: EvalTarget, data: EvalData, report: ReportFn | None = None) -> ObjectiveResult:
        start = time.perf_counter()
        clock_start = target.clock.seconds
        index = fixed_subset(data.val_y, self.n, self.seed)
        y = data.val_y[index]  # the inputs are read a batch at a time: 1,000 images at 224x224 are 600 MB
        robust = torch.zeros(len(y), dtype=torch.bool, device=y.device)
        clean = torch.zeros_like(robust)
        generator = torch.Generator(device=y.device).manual_seed(self.seed)
        autoattack = self.build_autoattack(target, data.val_x[index[:1]]) if self.attack == "autoattack" else None
        fooled_by = dict.fromkeys(self.attacks or (), 0)

        def step(batch: slice) -> None:
            xb, yb = data.val_x[index[batch]], y[batch]
            with torch.no_grad(), target.clock.measure():
                correct = target.logits(xb).argmax(1) == yb
            batch_robust = torch.zeros_like(correct)
            attacked = correct.nonzero().squeeze(1)
            if len(attacked):
                if autoattack is not None:
                    survived = self._run_autoattack(target, autoattack, xb[attacked], yb[attacked], fooled_by)
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
                report(fraction(robust[: batch.stop]), batch.stop)

        target.for_batches(len(y), step)
        value = fraction(robust)
        details: dict[str, Any] = {
            "robust_accuracy": value,
            "clean_accuracy": fraction(clean),
            "n": len(y),
            "attack": self.attack,
            "attack_version": self.version,
            "norm": self.norm,
            "eps": self.eps,
            "steps": self.steps,
            "restarts": self.restarts,
            "per_class": per_class_accuracy(robust, y, target.num_classes),
        }
        if autoattack is None:
            details["step_size"] = self.effective_step_size
        else:  # how many samples each attack took from the ones before it left robust
            details["fooled_by"] = fooled_by
        return ObjectiveResult(
            self.name, value, details, time.perf_counter() - start, target.clock.seconds - clock_start, correct=robust
        )

    def build_autoattack(self, target: EvalTarget, x: torch.Tensor | None = None) -> list[tuple[str, Any]]:
        """The torchattacks attacks of this AutoAttack, in order, with the original's settings."""
        try:
            import torchattacks
        except ImportError:
            raise InputError(
                "attack='autoattack' needs torchattacks: pip install 'ct-tune[attacks]' (or use attack='pgd')"
            ) from None
        if x is not None and x.dim() != 4:
            raise InputError(f"attack='autoattack' needs image batches (N, C, H, W); got {x.dim()}-D inputs")
        classes = target.num_classes
        needs = {"apgd-dlr": 3, "apgd-t": 4, "fab-t": 2}  # the DLR losses read the 3rd (4th) largest logit
        for name in self.attacks or ():
            if classes < needs.get(name, 2):
                raise InputError(f"AutoAttack's {name} needs at least {needs[name]} classes; this model has {classes}")
        norm = {"linf": "Linf", "l2": "L2"}[self.norm]
        model = _PixelModel(target).eval()
        common = {"norm": norm, "eps": self.eps, "seed": self.seed}
        targets = min(self.n_target_classes or 1, classes - 1)
        built: list[tuple[str, Any]] = []
        for name in self.attacks or ():
            if name in ("apgd-ce", "apgd-dlr"):
                attack = torchattacks.APGD(
                    model, steps=self.steps, n_restarts=self.restarts, loss=name[5:], rho=0.75, **common
                )
            elif name == "apgd-t":
                attack = torchattacks.APGDT(
                    model, steps=self.steps, n_restarts=1, rho=0.75, n_classes=classes, **common
                )
                attack.n_target_classes = targets
            elif name in ("fab", "fab-t"):
                targeted = name == "fab-t"
                attack = torchattacks.FAB(
                    model,
                    steps=self.steps,
                    n_restarts=1 if targeted else self.restarts,
                    multi_targeted=targeted,
                    n_classes=classes,
                    **common,
                )
                attack.n_target_classes = targets
            else:  # square, as the original runs it: p_init 0.8, margin loss, no rescaled schedule
                attack = torchattacks.Square(
                    model,
                    n_queries=self.n_queries,
                    n_restarts=1,
                    p_init=0.8,
                    loss="margin",
                    resc_schedule=False,
                    **common,
                )
            built.append((name, attack))
        return built

    def _run_autoattack(
        self,
        target: EvalTarget,
        attacks: list[tuple[str, Any]],
        x: torch.Tensor,
        y: torch.Tensor,
        fooled_by: dict[str, int],
    ) -> torch.Tensor:
        """Each attack on the samples still robust after the ones before it; the robust mask. A sample
        counts as fooled only by an input inside the eps ball (FAB and Square check it, APGD projects)."""
        robust = torch.ones(len(y), dtype=torch.bool, device=y.device)
        tolerance = 1e-5 if self.norm == "linf" else 1e-4
        devices = [x.device] if x.device.type == "cuda" else []
        for name, attack in attacks:
            alive = robust.nonzero().squeeze(1)
            if len(alive) == 0:
                break
            # torchattacks reseeds torch's global generator in every call: keep the caller's untouched
            with torch.random.fork_rng(devices=devices), target.clock.measure():
                x_adv = attack(x[alive], y[alive])
            with torch.no_grad(), target.clock.measure():
                fooled = target.logits(x_adv).argmax(1) != y[alive]
            delta = (x_adv - x[alive]).flatten(1)
            size = delta.abs().amax(1) if self.norm == "linf" else delta.norm(dim=1)
            fooled &= size <= self.eps + tolerance
            robust[alive[fooled]] = False
            fooled_by[name] += int(fooled.sum())
        return robust
