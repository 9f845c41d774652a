"""What resizing 8-bit images as images (the default since 2026-12-04) moves, against converting them to
float first and resizing floats (before): the pixels, and a probe's and the head's val accuracy.

    python benchmarks/resize_order.py [--photos DIR] [--val 200]

Without ``--photos`` it writes a synthetic ImageFolder of RGB photos of varying size (260-340 x 300-380,
10 classes with weak class-dependent patterns under strong noise), so that every image is resized (short
side to 256) and centre-cropped to 224, then scores a torchvision resnet18 (random weights: the probe
reads its features) both ways, at ReLU and at beta 0.8, on the same samples in one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ct_tune  # noqa: E402,F401  (first: makes torchvision importable)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchvision.transforms import v2  # noqa: E402


def write_photos(root: Path, train: int, val: int, seed: int = 1) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for i in range(count):
            c = i % 10
            height, width = 260 + int(rng.integers(0, 80)), 300 + int(rng.integers(0, 80))
            yy, xx = np.mgrid[0:height, 0:width]
            grey = 127 + 12 * np.sin(xx * (c + 1) / 40 + rng.uniform(0, 6)) + 10 * np.cos(yy * (c + 2) / 50)
            grey = grey + rng.normal(0, 40, (height, width))
            rgb = np.stack([grey, np.roll(grey, c * 7, 0), 255 - grey], -1).clip(0, 255).astype(np.uint8)
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(folder / f"{i}.png")


def score(root: Path, float_first: bool) -> tuple[torch.Tensor, dict]:
    """Val pixels and {(beta, objective): (value, per-sample correctness)} with one resize order."""
    import ct_tune.data._datamodule as datamodule
    from ct_tune.bench import Bench, bench_spec
    from ct_tune.data._transforms import build_transform

    def before(**settings):  # ToDtype moved to right after ToImage: floats resized
        steps = [s for s in build_transform(**settings).transforms if not isinstance(s, v2.ToDtype)]
        return v2.Compose([steps[0], v2.ToDtype(torch.float32, scale=True), *steps[1:]])

    datamodule.build_transform = before if float_first else build_transform
    try:
        spec = bench_spec(
            model={"name": "resnet18"},
            data={"name": "imagefolder", "data_dir": str(root), "cache": False},
            objectives=["probe", "accuracy"],
            run={"device": "cpu", "batch_size": 32},
        )
        with Bench.open(spec) as bench:
            x, _ = bench.data.tensors("val")
            found = {}
            for beta in (1.0, 0.8):
                bench.handle.update(dict.fromkeys(bench.units, beta), c=0.5)
                for name, result in bench.evaluator("val").evaluate().items():
                    found[(beta, name)] = (result.value, result.correct.clone())
            return x, found
    finally:
        datamodule.build_transform = build_transform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, help="an ImageFolder with train/ and val/ (default: synthetic)")
    parser.add_argument("--train", type=int, default=300, help="synthetic train photos (default 300)")
    parser.add_argument("--val", type=int, default=200, help="synthetic val photos (default 200)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.photos or Path(scratch)
        if args.photos is None:
            write_photos(root, args.train, args.val)
        x_before, before = score(root, float_first=True)
        x_after, after = score(root, float_first=False)
    moved = (x_before - x_after).abs() * 255
    print(f"pixels moved: {float((moved > 0).float().mean()) * 100:.1f}% of them, by {float(moved.mean()):.2f}/255")
    print(f"on average and at most {float(moved.max()):.2f}/255\n")
    print("| beta | objective | floats resized (before) | 8-bit resized (now) | samples that flip |")
    print("|---|---|---|---|---|")
    for (beta, name), (value, correct) in before.items():
        now, now_correct = after[(beta, name)]
        flips = int((correct != now_correct).sum())
        print(f"| {beta} | {name} | {value:.4f} | {now:.4f} | {flips} of {len(correct)} |")


if __name__ == "__main__":
    main()
