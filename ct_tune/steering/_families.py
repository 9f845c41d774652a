"""Activation families: which activations CT steers, and the exact form of CT for each.

CT's formula, with ``m = 1 - beta``, is ``c * gate(s * beta * x / m) * x + (1 - c) * softplus(x / m) * m``.
A family fixes the gate and its input scale ``s``:

- ``relu``: gate = sigmoid, s = 1: the paper's CT. Baseline beta0 = 1 (ReLU), c defaults to 0.5.
- ``silu``: the same formula. At beta0 = 0.5 and c = 1 it *is* SiLU, ``sigmoid(x) * x``, so a SiLU network
  is a CT network at that point; c defaults to 1.
- ``gelu``: gate = Phi (the standard normal CDF), s = 1 / 1.702. At beta0 = 1.702 / 2.702 (0.62990...)
  the gate's input is ``x`` and c = 1 gives ``x * Phi(x)``: exactly GELU. beta0 is where CT's sigmoid form
  has slope 1.702, GELU's usual sigmoid approximation, so a given beta is about equally smooth in both.
- ``gelu_tanh``: the same with GELU's tanh gate, ``0.5 * (1 + tanh(sqrt(2/pi) * (z + 0.044715 z^3)))``:
  exactly ``F.gelu(x, approximate="tanh")`` at beta0, c = 1.

In every family beta = 1 is ReLU exactly (the gate's input is infinite) and smaller beta is smoother
(towards the linear ``x / 2`` as beta -> 0). The ``(1 - c)`` softplus half is CT's own in every family:
only the gate changes. At a gated family's beta0 with c = 1 the steered call computes the network's own
function (``F.silu``, ``F.gelu``), so the baseline is bit-identical to the unsteered network, not merely
close: the formula would differ from the library's kernel by float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from ct_tune._errors import InputError

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FAMILIES", "RELU", "Family", "family_named", "family_of_call", "family_of_module"]

GELU_SLOPE = 1.702  # x * sigmoid(1.702 x) ~ GELU: where CT's sigmoid gate and GELU's gate are alike


def _phi(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0))))


def _phi_tanh(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z * z * z)))


@dataclass(frozen=True)
class Family:
    """One steerable activation: its CT gate, and where CT is the network's own activation."""

    name: str  # "relu", "silu", "gelu", "gelu_tanh": stored in studies and profiles
    label: str  # what reports print: "ReLU", "SiLU", "GELU", "GELU (tanh)"
    baseline: float  # beta0: with c = 1 (any c for relu) CT is exactly the network's own activation
    default_c: float  # 0.5 for ReLU (the paper's), 1 for the gated families (their own activation)
    scale: float  # s: the gate reads s * beta / m * x
    gate: Callable[[torch.Tensor], torch.Tensor]
    native: Callable[[torch.Tensor], torch.Tensor]
    fused: bool  # the fused kernels compute this gate (sigmoid); others run the eager formula

    @property
    def gated(self) -> bool:
        """Whether the network's own activation is a smooth member of the family (beta0 < 1)."""
        return self.baseline < 1.0

    def is_native(self, beta: float, c: float) -> bool:
        """Whether CT at (beta, c) is the network's own activation itself (computed by its own kernel)."""
        return beta == 1.0 if not self.gated else beta == self.baseline and c == 1.0


RELU = Family("relu", "ReLU", 1.0, 0.5, 1.0, torch.sigmoid, torch.relu, True)
SILU = Family("silu", "SiLU", 0.5, 1.0, 1.0, torch.sigmoid, F.silu, True)
_GELU_BETA0 = GELU_SLOPE / (1.0 + GELU_SLOPE)
GELU = Family("gelu", "GELU", _GELU_BETA0, 1.0, 1.0 / GELU_SLOPE, _phi, F.gelu, False)
_GELU_TANH_NATIVE = partial(F.gelu, approximate="tanh")
GELU_TANH = Family("gelu_tanh", "GELU (tanh)", _GELU_BETA0, 1.0, 1.0 / GELU_SLOPE, _phi_tanh, _GELU_TANH_NATIVE, False)

FAMILIES: Mapping[str, Family] = {family.name: family for family in (RELU, SILU, GELU, GELU_TANH)}

# Every spelling of each activation reaches a TorchFunctionMode as one of these (F.relu_ is torch.relu_).
RELU_FUNCTIONS = frozenset({F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_})
INPLACE_FUNCTIONS = frozenset({torch.relu_, torch.Tensor.relu_})
STEERABLE_FUNCTIONS = frozenset({*RELU_FUNCTIONS, F.silu, F.gelu})


def family_named(name: str) -> Family:
    """The family called ``name``; one line listing the known ones otherwise."""
    family = FAMILIES.get(name)
    if family is None:
        raise InputError(f"unknown activation family {name!r}; known: {', '.join(FAMILIES)}")
    return family


def family_of_call(func: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Family:
    """The family of a steerable function call (``func`` in ``STEERABLE_FUNCTIONS``)."""
    if func in RELU_FUNCTIONS:
        return RELU
    if func is F.silu:
        return SILU
    approximate = kwargs.get("approximate", args[1] if len(args) > 1 else "none")
    return GELU_TANH if approximate == "tanh" else GELU


def is_inplace_call(func: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
    """Whether a steerable call writes its result into its input (``x.relu_()``, ``F.silu(x, inplace=True)``)."""
    if func in INPLACE_FUNCTIONS:
        return True
    if func is F.gelu:
        return False
    return bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))


def family_of_module(module: nn.Module) -> Family | None:
    """The family of an activation module (``nn.ReLU``, ``nn.SiLU``, ``nn.GELU``), else None."""
    if isinstance(module, nn.ReLU):
        return RELU
    if isinstance(module, nn.SiLU):
        return SILU
    if isinstance(module, nn.GELU):
        return GELU_TANH if module.approximate == "tanh" else GELU
    return None
