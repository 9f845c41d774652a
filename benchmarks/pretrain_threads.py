"""What pretraining at one torch thread (the default since 2026-12-05, for weights that do not depend on the
machine) costs against more threads: the quickstart's pretraining (small ResNet, digits, 15 epochs), run
alternately at 1 and at N threads in one process, timed side by side, and whether the weights match.

    python benchmarks/pretrain_threads.py [--threads 2] [--repeats 2] [--epochs 15]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ct_tune  # noqa: E402,F401  (first: makes torchvision importable)

import torch  # noqa: E402


def pretrain_once(root: Path, threads: int, epochs: int, index: int) -> tuple[float, float, str]:
    """Fit seconds, val accuracy and a digest of the weights of one pretraining at ``threads`` threads."""
    from ct_tune.training import PretrainConfig, pretrain

    out = root / f"t{threads}-{index}.pt"
    config = PretrainConfig(
        data="digits",
        epochs=epochs,
        threads=threads,
        accelerator="cpu",
        out=str(out),
        tracking_uri=f"sqlite:///{root}/mlflow.db",
        progress=False,
    )
    result = pretrain(config)
    state = torch.load(out, weights_only=True)["state_dict"]
    digest = hashlib.sha256(b"".join(value.numpy().tobytes() for value in state.values())).hexdigest()[:12]
    return result["fit_seconds"], result["val_accuracy"], digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="against 1 (default: cores)")
    parser.add_argument("--repeats", type=int, default=2, help="pretrainings per thread count (default 2)")
    parser.add_argument("--epochs", type=int, default=15, help="(default 15, the quickstart's)")
    args = parser.parse_args()
    seconds: dict[int, list[float]] = {1: [], args.threads: []}
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(args.repeats):
            for threads in seconds:  # alternating, so load changes hit both
                fit, val, digest = pretrain_once(Path(scratch), threads, args.epochs, index)
                seconds[threads].append(fit)
                print(f"{threads} thread(s): fit {fit:6.1f} s, val accuracy {val:.4f}, weights {digest}", flush=True)
    one, many = statistics.median(seconds[1]), statistics.median(seconds[args.threads])
    print(f"median fit: 1 thread {one:.1f} s, {args.threads} threads {many:.1f} s: 1 thread takes {one / many:.2f}x")


if __name__ == "__main__":
    main()
