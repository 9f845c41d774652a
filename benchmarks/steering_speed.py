"""Images/s of a CT-steered model vs the same model with its own activation, measured side by side.

    python benchmarks/steering_speed.py [--batch-size 64] [--repeats 7] [--quick]
        [--models all|cifar|torchvision|families]

Three sides run in turn, round after round: the plain model, the steered copy with the eager CT formula
(``CT_TUNE_FUSED=0``) and the same steered copy with the fused kernels (``ct_tune._fused``). ``families``
(in ``all``) adds a GELU network (timm convnext_atto) and a SiLU one (timm efficientnet_b0) at 64x64:
SiLU sites share ReLU's fused kernel (the sigmoid gate); GELU sites run the eager formula at every setting,
so their fused column is ``-``. Each
side's fastest round is kept (other load on a shared machine only ever slows a round down; medians of
paired ratios swung by 0.2 between runs here) and the ratios are plain/steered images per second. A
ratio of 1.0 means steering is free. The last line is the compile cost a fresh process pays on its
first fused call (inductor's on-disk cache makes it smaller after the first run on a machine).
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import time
from collections.abc import Callable

import ct_tune
from ct_tune.steering import FAMILIES
from ct_tune.steering._fused import set_fused

import torch
import torchvision.models as tvm
from torch import nn


def cifar_resnet18(num_classes: int = 10) -> nn.Module:
    """torchvision's resnet18 with a CIFAR stem: 3x3 stride-1 conv1 and no max-pool."""
    model = tvm.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_times(sides: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Per side, the fastest of ``repeats`` runs; the sides run in turn, round after round."""
    for work in sides.values():  # warm-up (and, for the fused side, the compile)
        work()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, work in sides.items():
            times[name].append(seconds(work))
    return {name: min(t) for name, t in times.items()}


def family_models() -> dict[str, tuple[nn.Module, int]]:
    """A GELU and a SiLU network from timm (an optional dependency: imported only when asked for)."""
    import timm

    return {
        f"timm {name} ({label}) @64x64": (timm.create_model(name, pretrained=False, num_classes=10).eval(), 64)
        for name, label in (("convnext_atto", "GELU"), ("efficientnet_b0", "SiLU"))
    }


def measure(
    name: str, model: nn.Module, size: int, batch: int, repeats: int
) -> list[tuple[str, str, dict[str, float]]]:
    """Time the model with its own activation against an identical copy steered with a per-block profile, with
    the eager CT formula and with the fused kernels (switched per call: the same hooks, the same model); no
    fused side where a family has no fused kernel (GELU)."""
    x = torch.rand(batch, 3, size, size)
    steered_model = copy.deepcopy(model)
    blocks = ct_tune.units(steered_model, x[:1], "block")
    profile = {unit: 0.9 - 0.01 * i for i, unit in enumerate(blocks)}
    handle = ct_tune.steer(steered_model, profile, granularity="block", example_input=x[:1])
    fusable = all(FAMILIES[family].fused for family in handle.families.values())
    rows = []
    for label, inference in (("inference", True), ("forward+backward", False)):

        def run(net: nn.Module, fused: bool | None = None, inference: bool = inference) -> Callable[[], None]:
            def work() -> None:
                set_fused(fused)
                if inference:
                    with torch.inference_mode():
                        net(x)
                else:
                    net(x.clone().requires_grad_(True)).logsumexp(1).sum().backward()

            return work

        sides = {"plain": run(model), "eager": run(steered_model, False)}
        if fusable:
            sides["fused"] = run(steered_model, True)
        rows.append((name, label, best_times(sides, repeats)))
    set_fused(None)
    return rows


def compile_seconds() -> dict[str, float]:
    """Seconds of the first fused forward and backward in a fresh process (compile, or inductor's disk cache)."""
    code = (
        "import time, torch; from ct_tune.steering import _fused; _fused.set_fused(True); "
        "x = torch.randn(8, 16, 32, 32, requires_grad=True); p = _fused.scalar_params(0.9, 0.5, x.dtype, x.device); "
        "t = time.perf_counter(); y = _fused.ct_fused(x, p); f = time.perf_counter() - t; "
        "t = time.perf_counter(); y.sum().backward(); b = time.perf_counter() - t; print(f, b)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return {"forward": float(out[0]), "backward": float(out[1])}


SIDES = ("plain", "eager", "fused")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="small batch, few repeats (a smoke run)")
    parser.add_argument("--models", choices=["all", "cifar", "torchvision", "families"], default="all")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch, repeats = (8, 2) if args.quick else (args.batch_size, args.repeats)
    torch.manual_seed(0)
    models = {}
    if args.models in ("all", "torchvision"):
        models["torchvision resnet18 @32x32"] = (tvm.resnet18(num_classes=10).eval(), 32)
    if args.models in ("all", "cifar"):
        models["CIFAR-style resnet18 @32x32"] = (cifar_resnet18().eval(), 32)
    if args.models in ("all", "families"):
        models.update(family_models())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {batch}, per-block betas, {repeats} pairs"
    )
    print(
        f"{'model':<38} {'pass':<18} {'plain img/s':>12} {'eager img/s':>12} {'fused img/s':>12} "
        f"{'eager/plain':>12} {'fused/plain':>12}"
    )
    for name, (model, size) in models.items():
        for model_name, label, sides in measure(name, model, size, batch, repeats):
            speeds = "".join(f" {batch / sides[side]:>12.1f}" if side in sides else f" {'-':>12}" for side in SIDES)
            ratios = "".join(
                f" {sides['plain'] / sides[side]:>12.3f}" if side in sides else f" {'-':>12}" for side in SIDES[1:]
            )
            print(f"{model_name:<38} {label:<18}{speeds}{ratios}")
    first = compile_seconds()
    print(f"first fused call in a fresh process: forward {first['forward']:.1f} s, backward {first['backward']:.1f} s")


if __name__ == "__main__":
    main()
