"""Time of one trial per objective, and the share spent outside forward/backward passes.

    python benchmarks/objective_overhead.py [--data digits|mnist5k] [--checkpoint PATH] [--repeats 5]

On the pretrained small built-in ResNet (pretrained here first if no checkpoint is given: about 20 s
on digits, 70 s on mnist5k). "outside" is everything but the network's forward and backward passes: data slicing,
the probe's L-BFGS fit, attack bookkeeping, metrics. The objectives are run in rotation, so machine
noise hits all of them alike; medians over the repeats are printed. Target: under 10% outside.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from ct_tune.bench import Bench, bench_spec

from _common import pretrained_checkpoint

OBJECTIVES = [
    {"name": "accuracy"},
    {"name": "probe"},
    {"name": "adversarial", "eps": "8/255", "steps": 10, "n": 500},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="digits", choices=["digits", "mnist5k"])
    parser.add_argument("--checkpoint", help="a checkpoint for --data (default: pretrain one now)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = Path(args.checkpoint) if args.checkpoint else pretrained_checkpoint(Path(scratch), args.data)
        spec = bench_spec(
            model={"checkpoint": str(checkpoint)},
            data={"name": args.data},
            objectives=OBJECTIVES,
            run={"device": "cpu", "batch_size": args.batch_size},
        )
        bench = Bench.open(spec, granularity="block")
        evaluators = {o.name: bench.evaluator("val", [o]) for o in spec.objectives}
        for evaluator in evaluators.values():  # warm-up: materialise tensors, first-call costs
            evaluator.evaluate()
        bench.handle.update({unit: 0.9 for unit in bench.units})
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in evaluators}
        for _ in range(args.repeats):
            for name, evaluator in evaluators.items():
                result = evaluator.evaluate()[name]
                times[name].append((result.seconds, result.compute_seconds))
        bench.close()
    print(
        f"{args.data} val ({len(evaluators['accuracy'].data.val_y)} images), cifar_resnet_small, per-block betas, "
        f"batch {args.batch_size}, {args.repeats} repeats, torch threads {__import__('torch').get_num_threads()}"
    )
    print(f"{'objective':<12} {'trial s':>9} {'forward/backward s':>19} {'outside':>9}")
    for name, pairs in times.items():
        total = statistics.median(t for t, _ in pairs)
        compute = statistics.median(c for _, c in pairs)
        print(f"{name:<12} {total:>9.3f} {compute:>19.3f} {1 - compute / total:>9.1%}")


if __name__ == "__main__":
    main()
