"""Trials per second when K trials are scored in one pass (``run.trials_per_batch``), K = 1, 2, 4, 8.

    python benchmarks/batched_trials.py [--data digits mnist5k] [--objectives accuracy probe] [--rounds 3]
                                        [--checkpoint-dir DIR]

On the pretrained small built-in ResNet (pretrained first when DIR has no checkpoint: about 20 s on
digits, 70 s on mnist5k). Each measurement scores the same 8 random per-block profiles, K at a time,
with ``Evaluator.evaluate_profiles`` (what a worker calls; Optuna and MLflow time per trial is the
same for every K and left out). The Ks run in rotation, round after round; the best round is printed
(other load on the machine only slows rounds down) with its ratio to K = 1. The CT activation is
fixed for the whole run (``--fused 1``, the default: the compiled kernels, as a long study runs once
``auto`` has switched; ``--fused 0``: the eager formula).
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass
from pathlib import Path

from ct_tune.bench import Bench, BenchSpec, bench_spec
from ct_tune.steering import _fused

import torch
from _common import pretrained_checkpoint

KS = (1, 2, 4, 8)
PROFILES = 8


def measure(checkpoint: Path, data: str, objective: str, rounds: int, batch_size: int) -> dict[int, float]:
    """Best trials/s per K over the rounds (other load on the machine only ever slows a round down)."""
    spec = bench_spec(
        model={"checkpoint": str(checkpoint)},
        data={"name": data},
        objectives=[objective],
        run={"device": "cpu", "batch_size": batch_size},
    )
    return measure_spec(spec, rounds=rounds).rates


@dataclass
class Measured:
    """Per K: the best trials/s over the rounds, and every profile's values (objective name -> value) and
    per-sample 1/0 (what the value is the mean of), in profile order; ``rows`` is the bench's rows per pass."""

    rates: dict[int, float]
    values: dict[int, list[dict[str, float]]]
    correct: dict[int, list[dict[str, torch.Tensor]]]
    rows: int


def measure_spec(
    spec: BenchSpec,
    *,
    rounds: int,
    ks: tuple[int, ...] = KS,
    profiles: int = PROFILES,
    granularity: str = "block",
    seconds: float | None = None,
) -> Measured:
    """Score the same ``profiles`` random per-unit profiles K at a time for every K in ``ks``, the Ks in
    rotation round after round (the first round's scores are kept; ``seconds``: no round starts after
    that long). Each K must divide ``profiles``."""
    started = time.perf_counter()
    bench = Bench.open(spec, granularity=granularity)
    try:
        evaluator = bench.evaluator("val")
        rng = random.Random(0)
        drawn = [({unit: rng.uniform(0.7, 1.0) for unit in bench.units}, 0.5) for _ in range(profiles)]
        values: dict[int, list[dict[str, float]]] = {}
        correct: dict[int, list[dict[str, torch.Tensor]]] = {}
        for k in ks:  # warm-up (tensors materialised, first-call costs), and the scores of each K
            found = [
                r
                for first in range(0, profiles, k)
                for r in evaluator.evaluate_profiles(bench.handle, drawn[first : first + k])
            ]
            values[k] = [{name: result.value for name, result in r.items()} for r in found]
            correct[k] = [
                {name: result.correct for name, result in r.items() if result.correct is not None} for r in found
            ]
        rates: dict[int, list[float]] = {k: [] for k in ks}
        for _ in range(rounds):
            if seconds is not None and rates[ks[0]] and time.perf_counter() - started > seconds:
                break
            for k in ks:
                start = time.perf_counter()
                for first in range(0, profiles, k):
                    evaluator.evaluate_profiles(bench.handle, drawn[first : first + k])
                rates[k].append(profiles / (time.perf_counter() - start))
        return Measured({k: max(v) for k, v in rates.items() if v}, values, correct, bench.batch_size)
    finally:
        bench.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["digits", "mnist5k"], choices=["digits", "mnist5k"])
    parser.add_argument("--objectives", nargs="+", default=["accuracy", "probe"], choices=["accuracy", "probe"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--fused",
        choices=["0", "1"],
        default="1",
        help="CT activation: 1 fused kernels (compiled in the warm-up), 0 eager",
    )
    parser.add_argument("--checkpoint-dir", default=None, help="reuse or write pretrained checkpoints here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import tempfile

    _fused.set_fused(args.fused == "1")  # fixed: "auto" would switch mid-measurement and bill one K for a compile
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.checkpoint_dir or scratch)
        root.mkdir(parents=True, exist_ok=True)
        checkpoints = {data: pretrained_checkpoint(root, data) for data in args.data}
        print(
            f"cifar_resnet_small, per-block betas, {PROFILES} profiles per measurement, batch {args.batch_size} "
            f"rows per pass (samples x K), {args.rounds} rounds, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, CT activation: {_fused.fused_status('cpu')}"
        )
        header = "".join(f" {f'K={k} trials/s':>14}" for k in KS) + "".join(f" {f'K={k}/K=1':>9}" for k in KS[1:])
        print(f"{'data':<9} {'objective':<10}{header}")
        for data in args.data:
            for objective in args.objectives:
                rates = measure(checkpoints[data], data, objective, args.rounds, args.batch_size)
                cells = "".join(f" {rates[k]:>14.2f}" for k in KS)
                ratios = "".join(f" {rates[k] / rates[1]:>9.2f}" for k in KS[1:])
                print(f"{data:<9} {objective:<10}{cells}{ratios}")


if __name__ == "__main__":
    main()
