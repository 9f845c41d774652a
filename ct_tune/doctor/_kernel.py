"""Whether the fused CT kernels compile and match the plain math on each device: inductor's C++ on the CPU,
Triton on CUDA (``ct_tune.steering.check_fused``).

Without them ct-tune is still correct: the hooks fall back to the eager formula, which makes a steered
CIFAR-style resnet18 run at 0.68-0.73 of its plain speed instead of 0.95 (README, Benchmarks).
"""

from __future__ import annotations

import logging
import os
import time

from ct_tune.doctor._report import FAILED, OK, Check
from ct_tune.steering import check_fused, fused_status

__all__ = ["kernel_line"]

logger = logging.getLogger(__name__)

EAGER = "or set CT_TUNE_FUSED=0 to run CT eager (correct, but a steered network runs about 1.3x slower)"
FIXES = {
    "cpu": "install a C++ compiler for inductor (g++, or the one $CXX names: apt install g++) " + EAGER,
    "cuda": "install the Triton that matches torch (pip install triton; CUDA wheels of torch bring it) " + EAGER,
}
COMPILER = {"cpu": "C++ (inductor)", "cuda": "Triton"}


def kernel_line(device: str) -> Check:
    """The device's line: its forward and backward kernels in float32, compiled now and compared."""
    kind = device.split(":", 1)[0]
    logger.info("doctor: compiling the fused CT kernels on %s (10-30 s the first time on a CPU)", device)
    start = time.perf_counter()
    reason = check_fused(device)
    seconds = time.perf_counter() - start
    name = f"fused kernel {device}"
    if reason is not None:
        fix = FIXES[kind]
        if kind == "cpu" and os.environ.get("CXX"):
            fix = f"$CXX is {os.environ['CXX']!r}: name a C++ compiler that runs (or unset it), {EAGER}"
        return Check("kernel", name, FAILED, f"{COMPILER[kind]}: {reason}", fix)
    detail = f"{COMPILER[kind]} forward and backward compile and match the plain math ({seconds:.1f} s)"
    status = fused_status(kind)
    if status.startswith("eager"):
        detail += f"; this process runs {status}"
    return Check("kernel", name, OK, detail)
