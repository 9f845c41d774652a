"""Per-channel CT: one beta and one c for each channel of a ReLU's input (what trained CT learns).

A unit steered by a ``ChannelCT`` applies CT with a vector of betas and a vector of c, broadcast over
the channel dimension: dim 1 of a 4-D activation (N, C, H, W), the last dim otherwise ((N, C), tokens
(N, L, C)), as the CT authors' trainable activation does. A vector of length 1 is one beta and one c for
the whole unit (trained global, stage or block CT, whose c is per unit too).

Entries with beta = 1 are exact ReLU (``ct_tune.steering._activation``). The eager tensor formula is
used, never the fused kernels: a trained profile must score the same in every process, whether or not
the fused path has switched on there, and the training that produced it ran this same code.
"""

from __future__ import annotations

from collections.abc import Sequence

from ct_tune._errors import InputError
from ct_tune.steering._activation import ct_unchecked
from ct_tune.steering._families import RELU, Family

import torch

__all__ = ["ChannelCT", "channel_dim"]


def channel_dim(x: torch.Tensor) -> int:
    """Where the channels of an activation are: dim 1 of a 4-D tensor, the last dim otherwise."""
    return 1 if x.dim() == 4 else x.dim() - 1


class ChannelCT:
    """One unit's betas and c per channel (or one of each for the unit), applied at every call of its sites.

    ``beta`` in (0, 1] and ``c`` in [0, 1] are 1-D tensors of one length (or floats/sequences); subclasses
    (trained CT) compute them from parameters at call time instead.
    """

    __slots__ = ("_beta", "_c", "name")

    def __init__(self, beta: torch.Tensor | Sequence[float], c: torch.Tensor | Sequence[float], *, name: str) -> None:
        self.name = name
        beta_t = torch.as_tensor(beta, dtype=torch.float32).reshape(-1).detach().clone()
        c_t = torch.as_tensor(c, dtype=torch.float32).reshape(-1).detach().clone()
        if beta_t.numel() == 0 or c_t.shape != beta_t.shape:
            raise InputError(f"unit {name!r}: give as many values of c as betas ({c_t.numel()} vs {beta_t.numel()})")
        if not bool(((beta_t > 0) & (beta_t <= 1)).all()):
            raise InputError(f"unit {name!r}: every beta must be in (0, 1] (1 is plain ReLU)")
        if not bool(((c_t >= 0) & (c_t <= 1)).all()):
            raise InputError(f"unit {name!r}: every c must be in [0, 1]")
        self._beta, self._c = beta_t, c_t

    def values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The current betas and c, 1-D, as the activation uses them."""
        return self._beta, self._c

    @property
    def channels(self) -> int:
        return self._beta.numel()

    def __call__(self, x: torch.Tensor, family: Family = RELU) -> torch.Tensor:
        beta, c = self.values()
        n = beta.numel()
        if n == 1:
            return ct_unchecked(x, beta.to(x.device), c.to(x.device), family)
        dim = channel_dim(x)
        if x.dim() < 2 or x.shape[dim] != n:
            got = tuple(x.shape)
            raise InputError(
                f"unit {self.name!r} has {n} per-channel betas but its ReLU input has shape {got}: "
                "the profile was made for a model with other channel counts; use that model"
            )
        shape = [1] * x.dim()
        shape[dim] = n
        return ct_unchecked(x, beta.to(x.device).view(shape), c.to(x.device).view(shape), family)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        beta, _c = self.values()
        return f"ChannelCT({self.name!r}, channels={beta.numel()}, mean beta={float(beta.mean()):.4f})"
