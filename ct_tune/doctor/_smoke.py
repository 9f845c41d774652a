"""A few-second end-to-end check per device: a tiny conv net steered at one beta against a float64 reference.

The net has the three ReLU forms steering must catch in torchvision models (an ``nn.ReLU(inplace=True)``, the
same module called twice, an inline ``F.relu``). On each device it runs steered at beta 0.8, eager and (where
the kernel check passed) fused, in fp32 and, on CUDA, under bf16 / fp16 autocast as ``run.precision`` does;
each output must lie within the dtype's tolerance of the same steered net run in float64 on the CPU, and at
beta 1 the steered net must give exactly what the plain ReLU net gives.

Tolerances (largest difference over the largest output magnitude): fp32 1e-4 on the CPU and 5e-3 on CUDA
(its convolutions run in TF32 by default, a 10-bit mantissa), fp16 5e-3, bf16 3e-2 (an 8-bit mantissa;
the CPU's bf16 arithmetic gave 5e-3, fp16 4e-4, fp32 5e-8). The weights are small so that the
pre-activations lie within a few m = 1 - beta of 0, where CT differs from ReLU: at beta 0.8 the steered
output differs from the ReLU net's by 0.18 of its magnitude, six times the loosest tolerance, so a device
that lost the steering fails every tolerance.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator

from ct_tune.doctor._report import FAILED, OK, Check
from ct_tune.steering import fused_setting, steer

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SMOKE_BETA", "smoke_test"]

logger = logging.getLogger(__name__)

SMOKE_BETA = 0.8
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TOLERANCE = {"cpu fp32": 1e-4, "cuda fp32": 5e-3, "cuda bf16": 3e-2, "cuda fp16": 5e-3}
WEIGHT_SCALE = 0.06


class TinyNet(nn.Module):
    """Two convolutions, one in-place ReLU module called twice, an inline ReLU, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x)) + x
        return self.head(F.relu(x - 0.1).mean((2, 3)))


def _net_and_input() -> tuple[TinyNet, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    net = TinyNet().eval()
    with torch.no_grad():
        for param in net.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * WEIGHT_SCALE)
        net.head.weight.abs_()  # positive: CT's shifts add up in the output instead of cancelling
    return net, torch.randn(6, 3, 12, 12, generator=generator)


Outputs = tuple[torch.Tensor, torch.Tensor | None]


def _run(net: nn.Module, x: torch.Tensor, *, beta: float | None, device: str, precision: str) -> Outputs:
    """The net's output on ``device`` (steered at ``beta``; plain when None) under ``precision``'s autocast,
    and in fp32 the gradient of the outputs' sum with respect to the input (what an attack differentiates)."""
    model = copy.deepcopy(net).to(device)
    handle = steer(model, beta) if beta is not None else None
    try:
        if precision != "fp32":
            with torch.no_grad(), torch.autocast("cuda", dtype=DTYPES[precision]):
                return model(x.to(device)), None
        inputs = x.to(device, copy=True).requires_grad_(True)  # a fresh leaf: its own .grad
        out = model(inputs)
        out.sum().backward()
        return out.detach(), inputs.grad
    finally:
        if handle is not None:
            handle.remove()


def _off(outputs: Outputs, reference: Outputs) -> float:
    """The largest difference from the reference, over the reference's largest magnitude (output, gradient)."""
    return max(
        ((got.double().cpu() - want.double().cpu()).abs().max() / want.double().abs().max()).item()
        for got, want in zip(outputs, reference, strict=True)
        if got is not None
    )


def _precisions(device: str) -> list[str]:
    if not device.startswith("cuda"):
        return ["fp32"]
    major = torch.cuda.get_device_properties(device).major
    return ["fp32", "bf16", "fp16"] if major >= 8 else ["fp32", "fp16"]


def smoke_test(devices: list[str], *, fused: dict[str, bool]) -> Iterator[Check]:
    """One line per device, each as soon as it is known; ``fused[device]``: its fused kernels passed their
    check (the smoke test then runs them too)."""
    logger.info("doctor: steering a tiny net on %s", ", ".join(devices))
    net, x = _net_and_input()
    with fused_setting(False):
        reference = _run(copy.deepcopy(net).double(), x.double(), beta=SMOKE_BETA, device="cpu", precision="fp32")
    for device in devices:
        yield _device_line(net, x, reference, device, fused=fused.get(device, False))


def _device_line(net: nn.Module, x: torch.Tensor, reference: Outputs, device: str, *, fused: bool) -> Check:
    start = time.perf_counter()
    parts, problems = [], []
    modes = ["eager", "fused"] if fused else ["eager"]
    for precision in _precisions(device):
        tolerance = TOLERANCE[f"{device.split(':')[0]} {precision}"]
        errors = []
        for mode in modes:
            try:
                with fused_setting(mode == "fused"):
                    error = _off(_run(net, x, beta=SMOKE_BETA, device=device, precision=precision), reference)
                    relu = _run(net, x, beta=1.0, device=device, precision=precision)
                    plain = _run(net, x, beta=None, device=device, precision=precision)
                    same = torch.equal(relu[0], plain[0]) and _off(relu, plain) <= tolerance
            except Exception as failure:  # a kernel forced on that fails, a device that errors
                first = (str(failure).strip().splitlines() or [""])[0][:200]
                problems.append(f"{precision} {mode}: {type(failure).__name__}: {first}")
                continue
            errors.append(f"{mode} {error:.1e}")
            if not error <= tolerance:  # NaN fails too
                problems.append(f"{precision} {mode} is {error:.1e} off the float64 reference (> {tolerance:.0e})")
            if not same:  # outputs bit for bit; gradients within the tolerance (CUDA's may vary run to run)
                problems.append(f"{precision} {mode} at beta 1 differs from the plain ReLU net")
        parts.append(f"{precision} {', '.join(errors)} (<= {tolerance:.0e})")
    seconds = time.perf_counter() - start
    name = f"smoke {device}"
    if problems:
        return Check("smoke", name, FAILED, "; ".join(problems), _smoke_fix(problems))
    detail = (
        f"tiny conv net at beta {SMOKE_BETA} vs float64 on the CPU (output, fp32 input gradient): "
        f"{'; '.join(parts)}; beta 1 is exactly ReLU ({seconds:.1f} s)"
    )
    return Check("smoke", name, OK, detail)


def _smoke_fix(problems: list[str]) -> str:
    if all(" fused" in problem for problem in problems):
        return "set CT_TUNE_FUSED=0 (eager is correct here), and report this line as a ct-tune bug"
    if all(problem.startswith(("bf16", "fp16")) for problem in problems):
        return "use run.precision: fp32 on this device, and report this line as a ct-tune bug"
    return "report this line and the versions above as a ct-tune bug"
