"""Images/s of a CT-steered model vs the same model with plain ReLU, measured side by side.

    python benchmarks/steering_speed.py [--batch-size 64] [--repeats 7] [--quick]

Plain and steered runs alternate (plain, steered, plain, ...) and the ratio is taken per pair, so load
on this noisy machine hits both sides alike; the median of the paired ratios is reported. A ratio of
1.0 means steering is free; the eager CT activation costs several memory passes per ReLU.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import ct_tune

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


def paired_ratio(
    plain: Callable[[], object], steered: Callable[[], object], repeats: int
) -> tuple[float, float, float]:
    """Median plain/steered time ratio over alternating runs, and the median time of each side."""
    plain(), steered()  # warm-up
    plain_times, steered_times = [], []
    for _ in range(repeats):
        plain_times.append(seconds(plain))
        steered_times.append(seconds(steered))
    ratios = [p / s for p, s in zip(plain_times, steered_times, strict=True)]
    return statistics.median(ratios), statistics.median(plain_times), statistics.median(steered_times)


def measure(name: str, model: nn.Module, batch: int, repeats: int) -> list[tuple[str, str, float, float, float]]:
    """Time the model with plain ReLU against an identical copy steered with a per-block profile."""
    x = torch.rand(batch, 3, 32, 32)
    steered_model = copy.deepcopy(model)
    blocks = ct_tune.units(steered_model, x[:1], "block")
    profile = {unit: 0.9 - 0.01 * i for i, unit in enumerate(blocks)}
    ct_tune.steer(steered_model, profile, granularity="block", example_input=x[:1])
    rows = []
    for label, inference in (("inference", True), ("forward+backward", False)):

        def run(net: nn.Module, inference: bool = inference) -> Callable[[], None]:
            def work() -> None:
                if inference:
                    with torch.inference_mode():
                        net(x)
                else:
                    net(x.clone().requires_grad_(True)).logsumexp(1).sum().backward()

            return work

        ratio, t_plain, t_steered = paired_ratio(run(model), run(steered_model), repeats)
        rows.append((name, label, batch / t_plain, batch / t_steered, ratio))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="small batch, few repeats (a smoke run)")
    args = parser.parse_args()
    batch, repeats = (8, 2) if args.quick else (args.batch_size, args.repeats)
    torch.manual_seed(0)
    models = {
        "torchvision resnet18 @32x32": tvm.resnet18(num_classes=10).eval(),
        "CIFAR-style resnet18 @32x32": cifar_resnet18().eval(),
    }
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {batch}, per-block betas, {repeats} pairs"
    )
    print(f"{'model':<30} {'pass':<18} {'plain img/s':>12} {'steered img/s':>14} {'steered/plain':>14}")
    for name, model in models.items():
        for row in measure(name, model, batch, repeats):
            print(f"{row[0]:<30} {row[1]:<18} {row[2]:>12.1f} {row[3]:>14.1f} {row[4]:>14.3f}")


if __name__ == "__main__":
    main()
