"""The GPUs torch sees (name, memory, compute capability) and the reduced precisions each one runs.

``run.precision`` bf16 / fp16 is autocast on CUDA and ignored on CPU (a study there scores in fp32), so the
precision check applies to CUDA devices only. bf16 needs compute capability 8.0 (Ampere) or newer.
"""

from __future__ import annotations

import os
import shutil

from ct_tune.doctor._report import FAILED, OK, SKIPPED, Check

import torch

__all__ = ["check_gpus", "check_precision", "cuda_devices"]

NO_GPU = "no CUDA GPU: the CPU will be used"
CPU_TORCH_FIX = (
    "install a CUDA build of torch (https://pytorch.org/get-started/locally/), or ignore this line to run on the CPU"
)


def cuda_devices() -> list[str]:
    """``cuda:0``, ``cuda:1``, ... as torch sees them (none when CUDA is unusable)."""
    try:
        return [f"cuda:{index}" for index in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except Exception:  # a broken driver: check_gpus says why
        return []


def check_gpus() -> list[Check]:
    """One line per CUDA GPU; without one, a skipped line, or a failed one when the machine has an NVIDIA
    driver that this torch cannot use (a CPU build, or a driver too old for its CUDA)."""
    devices = cuda_devices()
    if not devices:
        return [_no_gpu()]
    checks = []
    for device in devices:
        props = torch.cuda.get_device_properties(device)
        detail = (
            f"{props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability {props.major}.{props.minor}, "
            f"{props.multi_processor_count} SMs"
        )
        checks.append(Check("gpus", f"gpu {device}", OK, detail))
    return checks


def _no_gpu() -> Check:
    driver = os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi") is not None
    if not driver:
        return Check("gpus", "gpu", SKIPPED, NO_GPU)
    if torch.version.cuda is None:
        return Check(
            "gpus", "gpu", FAILED, f"an NVIDIA driver is installed but torch is a CPU build: {NO_GPU}", CPU_TORCH_FIX
        )
    try:
        torch.cuda.init()
        reason = "torch.cuda.is_available() is False"
    except Exception as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
    return Check(
        "gpus",
        "gpu",
        FAILED,
        f"an NVIDIA driver is installed but torch {torch.__version__} (CUDA {torch.version.cuda}) cannot use it: "
        f"{reason}{hint}",
        "install the torch build for this driver's CUDA version (nvidia-smi shows it), or ignore this line "
        "to run on the CPU",
    )


def check_precision(devices: list[str]) -> list[Check]:
    """One line per CUDA device: bf16 and fp16 autocast each run a convolution close to its fp32 result."""
    if not devices:
        return [
            Check(
                "precision",
                "precision",
                SKIPPED,
                "no CUDA GPU: run.precision bf16/fp16 applies on CUDA only (the CPU scores in fp32)",
            )
        ]
    return [_precision_line(device) for device in devices]


def _precision_line(device: str) -> Check:
    props = torch.cuda.get_device_properties(device)
    works, problems = [], []
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        if dtype == torch.bfloat16 and props.major < 8:
            problems.append(f"bf16 needs compute capability 8.0, this GPU has {props.major}.{props.minor}")
            continue
        reason = _autocast_reason(device, dtype)
        if reason is None:
            works.append(name)
        else:
            problems.append(f"{name}: {reason}")
    runs = f"{' and '.join(works)} run" if works else "no reduced precision runs"
    detail = "; ".join([runs, *problems]) if problems else f"{runs} (run.precision: bf16 or fp16)"
    failed = any(not p.startswith("bf16 needs") for p in problems)
    fix = "use run.precision: fp32 on this GPU, and update its driver and torch" if failed else None
    return Check("precision", f"precision {device}", FAILED if failed else OK, detail, fix)


def _autocast_reason(device: str, dtype: torch.dtype) -> str | None:
    """None when a convolution under autocast runs in ``dtype`` and lands near its fp32 result."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, 16, 16, generator=generator).to(device)
    conv = torch.nn.Conv2d(8, 8, 3, padding=1).to(device)
    try:
        with torch.no_grad():
            exact = conv(x)
            with torch.autocast("cuda", dtype=dtype):
                low = conv(x)
        torch.cuda.synchronize(device)
    except Exception as error:
        return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:200]}"
    if low.dtype != dtype:
        return f"autocast gave {low.dtype}"
    worst = (low.float() - exact).abs().max().item() / max(1.0, exact.abs().max().item())
    return None if worst < 5e-2 else f"a convolution is off by {worst:.1e} of its fp32 result"
