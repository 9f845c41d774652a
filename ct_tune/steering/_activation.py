"""The Curvature Tuning activation.

    m     = 1 - beta
    CT(x) = c * sigmoid(beta * x / m) * x + (1 - c) * softplus(x / m) * m

``beta`` in (0, 1] sets the curvature (beta = 1 is ReLU exactly), ``c`` in [0, 1] mixes the
swish-like and the softplus-like smoothing (the paper uses 0.5). SiLU and GELU networks use the same
family with their own gate (``ct_tune.steering._families``): ``family`` picks it, ReLU's by default.

Numerics, and why:
- beta = 1 returns ``torch.relu(x)`` itself, bit for bit: no 0/0, no NaN.
- ``softplus(x / m) * m`` is computed as ``F.softplus(x, beta=1/m)``, which switches to the identity
  above its threshold instead of overflowing ``exp``.
- float16 and bfloat16 inputs are computed in float32 and cast back: ``beta / m`` reaches 1e5 for
  beta = 0.99999, which is infinite in float16 and would turn ``0 * inf`` into NaN at x = 0.
- A tensor ``beta`` (one value per sample, for batched trials) may hold 1.0 in some entries; those
  entries take the ReLU branch and the smooth branch is evaluated with a harmless m so that its
  gradient (multiplied by zero in ``torch.where``) cannot be NaN.
"""

from __future__ import annotations

from numbers import Real

from ct_tune._errors import InputError
from ct_tune.steering._families import RELU, Family, family_named
from ct_tune.steering._fused import ct_fused, scalar_params, use_fused

import torch
import torch.nn.functional as F

__all__ = ["check_beta", "check_c", "ct", "ct_hot"]

BetaLike = float | torch.Tensor

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_beta(beta: BetaLike, *, name: str = "beta") -> None:
    """Raise ``InputError`` (a ``ValueError``) unless every beta is in (0, 1]."""
    if isinstance(beta, torch.Tensor):
        if not beta.is_floating_point():
            raise InputError(f"{name} must be a floating point tensor with values in (0, 1]; got {beta.dtype}")
        ok = bool(((beta > 0) & (beta <= 1)).all())  # NaN fails both comparisons
        if not ok:
            bad = beta[~((beta > 0) & (beta <= 1))].flatten()[0].item()
            raise InputError(f"{name} must be in (0, 1] (1 is plain ReLU); got {bad}")
        return
    if isinstance(beta, bool) or not isinstance(beta, Real):
        raise InputError(f"{name} must be a number in (0, 1] (1 is plain ReLU); got {beta!r}")
    if not (0.0 < float(beta) <= 1.0):
        raise InputError(f"{name} must be in (0, 1] (1 is plain ReLU); got {beta}")


def check_c(c: float) -> None:
    """Raise ``InputError`` (a ``ValueError``) unless c is a number in [0, 1]."""
    if isinstance(c, bool) or not isinstance(c, Real) or not (0.0 <= float(c) <= 1.0):
        raise InputError(f"c must be a number in [0, 1] (0.5 is the paper's default); got {c!r}")


class _FamilyC(float):
    """The default of ``ct``'s c: the family's own (a float subclass, so that an explicit None is refused)."""


FAMILY_C = _FamilyC(0.5)


def ct(x: torch.Tensor, beta: BetaLike, c: float = FAMILY_C, *, family: str = "relu") -> torch.Tensor:
    """Apply Curvature Tuning to ``x``: exact ReLU at beta = 1, smoother as beta decreases.

    ``beta`` is a float or a tensor broadcastable to ``x`` (per-sample betas); ``c`` is a float, by default
    the family's (0.5 for ``relu``, 1 for ``silu``, ``gelu`` and ``gelu_tanh``, where beta0 with c = 1 is the
    activation itself). Raises ``ValueError`` when beta is outside (0, 1] or c outside [0, 1].
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InputError(f"x must be a floating point tensor; got {getattr(x, 'dtype', type(x).__name__)}")
    kind = family_named(family)
    check_beta(beta)
    check_c(c)
    return ct_unchecked(x, beta, kind.default_c if c is FAMILY_C else float(c), kind)


def ct_unchecked(x: torch.Tensor, beta: BetaLike, c: float, family: Family = RELU) -> torch.Tensor:
    """``ct`` without argument checks, for the hot path (steering validates once, up front)."""
    if isinstance(beta, torch.Tensor):
        return _ct_tensor_beta(x, beta, c, family)
    beta = float(beta)
    if beta == 1.0:
        return torch.relu(x)
    if family.is_native(beta, c):
        return family.native(x)
    compute = x.float() if x.dtype in _LOW_PRECISION else x
    m = 1.0 - beta
    scale = beta / m if family.scale == 1.0 else beta / m * family.scale
    gate = family.gate(compute * scale)
    out = (c * gate) * compute + (1.0 - c) * F.softplus(compute, beta=1.0 / m)
    return out.to(x.dtype) if compute is not x else out


def ct_hot(x: torch.Tensor, beta: BetaLike, c: float, family: Family = RELU) -> torch.Tensor:
    """What the steering hooks call: exact ReLU at beta = 1, the network's own kernel at its family's
    beta0, the fused kernels where they are on and cover the family's gate (``ct_tune._fused``: one memory
    pass forward, one backward), else the eager formula."""
    if isinstance(beta, float):
        if beta == 1.0:
            return torch.relu(x)
        if family.fused and x.is_floating_point() and x.numel() and use_fused(x):
            if family.is_native(beta, c):
                return family.native(x)
            return ct_fused(x, scalar_params(beta, c, x.dtype, x.device))
    return ct_unchecked(x, beta, c, family)


def _ct_tensor_beta(x: torch.Tensor, beta: torch.Tensor, c: float | torch.Tensor, family: Family) -> torch.Tensor:
    compute = x.float() if x.dtype in _LOW_PRECISION else x
    beta = beta.to(device=x.device, dtype=compute.dtype)
    is_relu = beta >= 1.0
    m = torch.where(is_relu, torch.ones_like(beta), 1.0 - beta)
    scale = beta / m if family.scale == 1.0 else beta / m * family.scale
    gate = family.gate(compute * scale)
    smooth = (c * gate) * compute + (1.0 - c) * (F.softplus(compute / m) * m)
    out = torch.where(is_relu, torch.relu(compute), smooth)
    return out.to(x.dtype) if compute is not x else out
