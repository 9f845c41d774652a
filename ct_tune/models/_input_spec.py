"""What a network is fed: square side, channels, and the mean/std applied *inside* the forward path.

Data is served in pixel space ([0, 1]) and normalised by the model (``InputSpec.normalize``), so
adversarial attacks and any other pixel-space tool differentiate through the normalisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from ct_tune._errors import InputError

import torch
from torch import Tensor

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "InputSpec"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class InputSpec:
    """What a network is fed: ``normalize(pixels)`` with pixels in [0, 1], shaped (N, channels, size, size).

    ``size`` None means the data's native size. ``crop_pct`` and ``interpolation`` tell the data pipeline how
    to bring photos of varying size to ``size`` (resize the short side to ``size / crop_pct``, centre-crop).
    """

    size: int | None
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 1.0
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.channels not in (1, 3):
            raise InputError(f"input channels must be 1 or 3, not {self.channels}")
        if self.size is not None and (not isinstance(self.size, int) or self.size < 1):
            raise InputError(f"input size must be a positive integer, not {self.size!r}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise InputError(f"mean and std need {self.channels} value(s) each, got {self.mean} and {self.std}")
        if any(s <= 0 for s in self.std):
            raise InputError(f"std values must be positive, got {self.std}")
        if not 0 < self.crop_pct <= 1:
            raise InputError(f"crop_pct must be in (0, 1], not {self.crop_pct}")
        if self.interpolation not in INTERPOLATIONS:
            raise InputError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, not {self.interpolation!r}")

    @classmethod
    def uniform(cls, channels: int, value: float, spread: float, *, size: int | None = None) -> InputSpec:
        """The same mean and std on every channel (0.5/0.5 maps [0, 1] to [-1, 1])."""
        return cls(size=size, channels=channels, mean=(value,) * channels, std=(spread,) * channels)

    def normalize(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` per channel; differentiable, on x's device and dtype, for (C,H,W) or (N,C,H,W)."""
        if x.dim() < 3 or x.shape[-3] != self.channels:
            raise ValueError(
                f"expected {self.channels}-channel images (..., {self.channels}, H, W), got {tuple(x.shape)}"
            )
        mean, std = _stats(self.mean, self.std, x.device, x.dtype)
        return (x - mean) / std

    def with_size(self, size: int | None) -> InputSpec:
        return InputSpec(
            self.size if size is None else size, self.channels, self.mean, self.std, self.crop_pct, self.interpolation
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputSpec:
        known = {"size", "channels", "mean", "std", "crop_pct", "interpolation"}
        return cls(**{key: value for key, value in data.items() if key in known})


@lru_cache(maxsize=64)
def _stats(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device, dtype: torch.dtype):
    """Mean/std as broadcastable tensors, made once per device and dtype (no host copy per forward).

    Made outside inference mode even when first asked for inside it: a cached inference tensor could not be
    saved for backward, and a later gradient pass (an attack) would fail.
    """
    shape = (len(mean), 1, 1)
    with torch.inference_mode(False):
        return (
            torch.tensor(mean, dtype=dtype, device=device).view(shape),
            torch.tensor(std, dtype=dtype, device=device).view(shape),
        )
