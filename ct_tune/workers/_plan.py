"""How many worker processes, on which devices: one per listed GPU, or N CPU processes sharing the cores."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from ct_tune._errors import InputError

__all__ = ["WorkerPlan", "available_cores", "check_cores", "plan_workers"]


@dataclass(frozen=True)
class WorkerPlan:
    index: int
    device: str  # what the worker passes to torch: cpu, cuda
    visible_gpu: str | None  # CUDA_VISIBLE_DEVICES for the worker (one GPU each), None on CPU
    threads: int  # torch intra-op threads


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover  (not Linux)
        return os.cpu_count() or 1


def check_cores(plans: Sequence[WorkerPlan], *, oversubscribe: bool) -> str | None:
    """Refuse more CPU workers than the cores this process may use, unless ``oversubscribe``: then the
    warning line to print. Each worker holds its own torch and model (about 180 MB); beyond the cores they
    only slow each other down (``--workers 1000`` once filled a 2-core machine's memory)."""
    cpu = sum(plan.device == "cpu" for plan in plans)
    cores = available_cores()
    if cpu <= cores:
        return None
    if not oversubscribe:
        raise InputError(
            f"--workers {cpu}: more CPU workers than the {cores} core(s) this process may use; "
            f"pass --workers {cores} or fewer, or --oversubscribe to start them anyway"
        )
    return f"warning: {cpu} CPU workers share {cores} core(s) (--oversubscribe): each runs slower than alone"


def plan_workers(workers: int | None, devices: str) -> list[WorkerPlan]:
    """Workers per device: one per listed GPU, or ``workers`` CPU processes splitting the cores."""
    import torch

    devices = devices.strip().lower()
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, not {workers}")
    if devices == "auto":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        devices = ",".join(f"cuda:{i}" for i in range(count)) if count else "cpu"
    if devices == "cpu":
        n = workers or 1
        threads = max(1, available_cores() // n)
        return [WorkerPlan(i, "cpu", None, threads) for i in range(n)]
    gpus = []
    for item in devices.split(","):
        item = item.strip()
        if item == "cuda":
            item = "cuda:0"
        if not item.startswith("cuda:") or not item[5:].isdigit():
            raise InputError(f"--devices: {item!r} is not cpu, auto, or a list like cuda:0,cuda:1")
        gpus.append(item[5:])
    if not torch.cuda.is_available():
        raise InputError(f"--devices {devices} asks for GPUs, but this machine has no usable CUDA GPU; use cpu")
    missing = [g for g in gpus if int(g) >= torch.cuda.device_count()]
    if missing:
        raise InputError(f"--devices: GPU {missing[0]} does not exist (this machine has {torch.cuda.device_count()})")
    n = workers or len(gpus)
    threads = max(1, available_cores() // n)
    return [WorkerPlan(i, "cuda", gpus[i % len(gpus)], threads) for i in range(n)]
