"""Batched trials: K beta profiles scored in one forward pass.

The input batch is K stacked copies of the samples (``stack``); every ReLU call site gets a
``GroupedBeta`` holding one beta (and one c) per copy, so slice k of every activation is steered by
profile k. Eval-mode networks treat samples independently (BatchNorm uses its running statistics), so
slice k of the output equals a separate pass steered by profile k alone, up to float rounding of the
larger batch. One pass over K x B samples keeps a device busy that one trial's B samples would not,
and pays Python and per-op overheads once for K trials.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ct_tune._errors import InputError
from ct_tune.steering._activation import ct_unchecked
from ct_tune.steering._fused import ct_fused, params_for, use_fused

import torch

__all__ = ["GroupedBeta", "split", "stack"]


def stack(x: torch.Tensor, k: int) -> torch.Tensor:
    """K copies of a batch, one after the other: rows [0, B) are copy 0, [B, 2B) copy 1, ..."""
    return x if k == 1 else x.repeat(k, *([1] * (x.dim() - 1)))


def split(y: torch.Tensor, k: int) -> torch.Tensor:
    """The output of a stacked batch as (k, B, ...): index 0 is profile 0."""
    return y.unflatten(0, (k, -1))


class GroupedBeta:
    """One unit's beta (and c) for each of K profiles; applied to a batch of K equal groups of samples."""

    __slots__ = ("_tables", "beta", "c")

    def __init__(self, beta: Sequence[float], c: Sequence[float]) -> None:
        self.beta = torch.tensor([float(b) for b in beta], dtype=torch.float64)
        self.c = torch.tensor([float(v) for v in c], dtype=torch.float64)
        if self.beta.shape != self.c.shape or self.beta.numel() == 0:
            raise InputError(f"one c per profile: got {len(beta)} betas and {len(c)} values of c")
        self._tables: dict[tuple[Any, ...], torch.Tensor] = {}

    @property
    def k(self) -> int:
        return self.beta.numel()

    @property
    def all_relu(self) -> bool:
        return bool((self.beta >= 1.0).all())

    def _table(self, kind: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Constants per (kind, dtype, device), made once: a forward pass creates no tensors."""
        key = (kind, dtype, device)
        table = self._tables.get(key)
        if table is None:
            with torch.inference_mode(False):
                if kind == "fused":
                    table = params_for(self.beta, self.c, dtype=dtype).to(device)
                else:
                    compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
                    table = torch.stack([self.beta, self.c]).to(device=device, dtype=compute)
            self._tables[key] = table
        return table

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        k = self.k
        if x.dim() == 0 or x.shape[0] % k:
            raise InputError(
                f"batched steering with {k} profiles needs a batch of {k} stacked copies "
                f"(ct_tune.steering.stack); got a batch of {x.shape[0] if x.dim() else 'a scalar'}"
            )
        if self.all_relu:
            return torch.relu(x)
        if x.numel() and use_fused(x):
            return ct_fused(x, self._table("fused", x.dtype, x.device))
        grouped = x.unflatten(0, (k, -1))
        shape = (k,) + (1,) * (grouped.dim() - 1)
        beta, c = self._table("eager", x.dtype, x.device)
        return ct_unchecked(grouped, beta.view(shape), c.view(shape)).flatten(0, 1)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"GroupedBeta(beta={self.beta.tolist()}, c={self.c.tolist()})"
