"""What every objective shares: its result, the progress callback used for pruning, and timing."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

logger = logging.getLogger(__name__)

Direction = Literal["maximize", "minimize"]  # how a study optimises an objective

# Called after each chunk of the evaluation set with (running value, samples seen so far). A study
# passes one that reports to Optuna and raises optuna.TrialPruned when the pruner says so.
ReportFn = Callable[[float, int], None]


@dataclass
class ObjectiveResult:
    """One objective's score (higher is better unless the study says otherwise) and its details."""

    name: str
    value: float
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # wall time of the whole evaluation
    compute_seconds: float = 0.0  # of which inside forward/backward passes
    # 1/0 per evaluated sample, in split order (what the value is the mean of): the report's intervals and
    # paired tests read it. The tensor the objective built anyway: nothing is copied during a search.
    correct: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "seconds": self.seconds,
            "compute_seconds": self.compute_seconds,
            **self.details,
        }


class ComputeClock:
    """Adds up the time spent in forward/backward passes (synchronising CUDA only when asked)."""

    def __init__(self, device: torch.device, *, synchronize: bool = False) -> None:
        self.seconds = 0.0
        self._sync = synchronize and device.type == "cuda"

    @contextmanager
    def measure(self) -> Iterator[None]:
        if self._sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._sync:
                torch.cuda.synchronize()
            self.seconds += time.perf_counter() - start


def fraction(mask: torch.Tensor) -> float:
    """The share of true entries as a Python float from the count: 0.886, not float32's 0.88599997."""
    n = mask.numel()
    return int(mask.sum()) / n if n else float("nan")


def per_class_accuracy(correct: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Accuracy of each class (None for a class absent from the evaluated samples)."""
    totals = torch.bincount(labels, minlength=num_classes)
    hits = torch.bincount(labels[correct], minlength=num_classes)
    return [(h / t) if t else None for h, t in zip(hits.tolist(), totals.tolist(), strict=True)]


def autocast(device: torch.device, precision: str):
    """Autocast context for reduced precision on CUDA; a no-op for fp32 and on CPU (said once, not silent)."""
    if precision == "fp32" or device.type != "cuda":
        if precision != "fp32":
            _say_full_precision(device.type, precision)
        return torch.autocast(device.type, enabled=False)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast("cuda", dtype=dtype)


@functools.cache
def _say_full_precision(device_type: str, precision: str) -> None:
    logger.warning(f"run.precision {precision} applies on CUDA only: scoring on {device_type} in fp32")


PRECISIONS = ("fp32", "bf16", "fp16")
