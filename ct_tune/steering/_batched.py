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
from ct_tune.steering._families import Family
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
    """One unit's beta (and c) for each of K profiles; applied to a batch of K equal groups of samples.

    A c of None is the family's own (``ct_tune.steering._families``), filled in when a site applies it."""

    __slots__ = ("_c", "_tables", "beta")

    def __init__(self, beta: Sequence[float], c: Sequence[float | None]) -> None:
        self.beta = torch.tensor([float(b) for b in beta], dtype=torch.float64)
        self._c = [None if v is None else float(v) for v in c]
        if len(self._c) != self.beta.numel() or self.beta.numel() == 0:
            raise InputError(f"one c per profile: got {len(beta)} betas and {len(c)} values of c")
        self._tables: dict[tuple[Any, ...], torch.Tensor] = {}

    def c_for(self, family: Family) -> torch.Tensor:
        """The K values of c at a site of ``family``."""
        return torch.tensor([family.default_c if v is None else v for v in self._c], dtype=torch.float64)

    @property
    def k(self) -> int:
        return self.beta.numel()

    @property
    def all_relu(self) -> bool:
        return bool((self.beta >= 1.0).all())

    def _table(self, kind: str, family: Family, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Constants per (kind, c's family, dtype, device), made once: a forward pass creates no tensors."""
        key = (kind, family.default_c, dtype, device)
        table = self._tables.get(key)
        if table is None:
            with torch.inference_mode(False):
                c = self.c_for(family)
                if kind == "fused":
                    table = params_for(self.beta, c, dtype=dtype).to(device)
                else:
                    compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
                    table = torch.stack([self.beta, c]).to(device=device, dtype=compute)
            self._tables[key] = table
        return table

    def __call__(self, x: torch.Tensor, family: Family) -> torch.Tensor:
        k = self.k
        if x.dim() == 0 or x.shape[0] % k:
            raise InputError(
                f"batched steering with {k} profiles needs a batch of {k} stacked copies "
                f"(ct_tune.steering.stack); got a batch of {x.shape[0] if x.dim() else 'a scalar'}"
            )
        if self.all_relu:
            return torch.relu(x)
        if family.fused and x.numel() and use_fused(x):
            return ct_fused(x, self._table("fused", family, x.dtype, x.device))
        grouped = x.unflatten(0, (k, -1))
        shape = (k,) + (1,) * (grouped.dim() - 1)
        beta, c = self._table("eager", family, x.dtype, x.device)
        out = ct_unchecked(grouped, beta.view(shape), c.view(shape), family)  # type: ignore[arg-type]
        return out.flatten(0, 1)

    def __repr__(self) -> str:
        return f"GroupedBeta(beta={self.beta.tolist()}, c={self._c})"
