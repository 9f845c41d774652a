"""Rows per forward pass from a memory budget (``run.batch_size: auto``).

One probe pass over one row records the size of every module's output. A forward pass without gradients
holds a few activations at a time, each with eager CT's intermediates (sigmoid, softplus, products); a
pass with gradients (an attack) keeps every module's output and more. So a row is taken to cost
``_FORWARD_FACTOR`` times the largest output, or ``_GRADIENT_FACTOR`` times the sum of all outputs, and the
batch is the budget over that, within [1, 256] on a CPU (bigger passes were measured slower per row
there) and [1, 1024] on a GPU.

Calibrated 2026-12-04 on this 2-core machine (CPU, fp32, eager CT at beta 0.9, growth of peak RSS over
the pass divided by its rows; ``largest``/``sum``: output sizes of the probe pass):

    model at 224x224        largest  sum     inference a row      forward+backward a row
    torchvision resnet18    3.1 MB   29 MB   15 MB (4.9 largest)  67 MB (2.3 sum)
    torchvision resnet50    3.1 MB   122 MB  28 MB (9.2 largest)  260 MB (2.1 sum)

The factors (10 and 2.5) bound both, so a budget is an upper bound, not a target: resnet18 in inference
uses about half of it.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

__all__ = ["default_budget_mb", "rows_per_pass"]

logger = logging.getLogger(__name__)

_FORWARD_FACTOR = 10.0
_GRADIENT_FACTOR = 2.5
CPU_BUDGET_MB = 1024
CAPS = {"cpu": 256, "cuda": 1024}


def default_budget_mb(device: torch.device) -> int:
    """1 GB on a CPU; half the free memory of a GPU (what the other processes on it left)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(1, int(free / 2**20 / 2))
    return CPU_BUDGET_MB


def output_sizes(net: nn.Module, example: torch.Tensor) -> list[int]:
    """Bytes of every leaf module's output for ``example`` (one row)."""
    sizes: list[int] = []

    def record(_module: nn.Module, _args: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel() * output.element_size())

    leaves = [m for m in net.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(record) for m in leaves]
    try:
        with torch.inference_mode():
            net(example)
    finally:
        for handle in handles:
            handle.remove()
    return sizes or [example.numel() * example.element_size()]


def rows_per_pass(
    net: nn.Module, example: torch.Tensor, *, device: torch.device, budget_mb: int | None, gradients: bool
) -> int:
    """How many rows of ``example``'s shape one pass may hold within ``budget_mb`` (None: the default)."""
    sizes = output_sizes(net, example[:1])
    per_row = _GRADIENT_FACTOR * sum(sizes) if gradients else _FORWARD_FACTOR * max(sizes)
    budget = (budget_mb or default_budget_mb(device)) * 2**20
    cap = CAPS.get(device.type, CAPS["cpu"])
    rows = int(max(1, min(cap, budget // max(per_row, 1))))
    logger.debug(
        "batch size auto: %d rows (%.1f MB a row%s, budget %.0f MB)",
        rows,
        per_row / 2**20,
        " with gradients" if gradients else "",
        budget / 2**20,
    )
    return rows
