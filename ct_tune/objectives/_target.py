"""The model as an objective sees it: pixels in, logits out, on one device and precision."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ct_tune.objectives._base import ComputeClock, autocast
from ct_tune.steering import split, stack

import torch
from torch import nn

logger = logging.getLogger(__name__)


class Rows(Protocol):
    """Inputs as an objective reads them: a tensor, or rows decoded a batch at a time from a compact store
    (``ct_tune.data.Samples``); ``rows[slice]`` and ``rows[index_tensor]`` are tensors on the device."""

    def __len__(self) -> int: ...

    def __getitem__(self, rows: slice | torch.Tensor) -> torch.Tensor: ...


@dataclass
class EvalData:
    """What an evaluation reads, in pixel space: inputs as rows, labels as tensors on the target's device."""

    val_x: Rows
    val_y: torch.Tensor
    train_x: Rows | None = None  # only the probe needs these
    train_y: torch.Tensor | None = None
    class_names: list[str] | None = None


@dataclass
class EvalTarget:
    """A network, the normalisation in front of it, and how to run it.

    Normalisation sits inside the forward path (not in the data), so attacks work in pixel space.
    The network is scored as it currently is: steering is applied by the caller.
    """

    net: nn.Module
    normalize: Callable[[torch.Tensor], torch.Tensor]
    num_classes: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    batch_size: int = 256
    clock: ComputeClock | None = None

    def __post_init__(self) -> None:
        if self.clock is None:
            self.clock = ComputeClock(self.device)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return self.net(self.normalize(x)).float()

    def logits_stacked(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Logits of K stacked copies of ``x`` as (k, n, classes), for a net steered with K profiles."""
        return split(self.logits(stack(x, k)), k)

    def for_batches(self, n: int, step: Callable[[slice], None], copies: int = 1) -> None:
        """Call ``step`` on consecutive slices of ``n`` samples, halving the batch on CUDA OOM.

        ``batch_size`` counts rows of a forward pass: with ``copies`` stacked copies of each sample
        (batched trials) a slice holds ``batch_size // copies`` samples. Bigger passes were measured
        slower per row on CPU (activations leave the cache); on a GPU, raise ``batch_size`` instead.
        """
        start = 0
        while start < n:
            stop = min(start + max(1, self.batch_size // copies), n)
            try:
                step(slice(start, stop))
            except torch.cuda.OutOfMemoryError:
                if self.batch_size == 1:
                    raise
                torch.cuda.empty_cache()
                self.batch_size = max(1, self.batch_size // 2)
                logger.warning("out of GPU memory: batch size lowered to %d", self.batch_size)
                continue
            start = stop
