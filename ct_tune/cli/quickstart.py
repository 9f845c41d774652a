"""``ct-tune quickstart``: the whole workflow offline, in a few minutes on a laptop CPU.

1. pretrain the small built-in ResNet on scikit-learn's digits (or reuse the cached checkpoint);
2. transfer it to MNIST with the paper's protocol (frozen backbone, a linear probe per trial) in a
   two-stage pipeline with 2 workers: one global beta (seeded with the paper's grid), then one beta per
   residual block, warm-started from the global best;
3. score the ReLU baseline, the best global beta and the best per-block profile once on the test split,
   export the profile and print where the plots are and how to open the dashboards.

Run it again and it resumes (finished stages are not rerun); --fresh starts over.
"""

from __future__ import annotations

import argparse
from typing import Any

from ct_tune.cli._common import CommandResult, add_command

import yaml


def register(subparsers: Any) -> None:
    parser = add_command(
        subparsers,
        "quickstart",
        _quickstart,
        help="pretrain, search betas per block and report, offline",
        description=__doc__,
    )
    parser.add_argument("--workers", type=int, help="worker processes (default 2, or 1 on a single core)")
    parser.add_argument(
        "--oversubscribe", action="store_true", help="more workers than this process's cores (refused otherwise)"
    )
    parser.add_argument("--name", default="quickstart", help="pipeline name (its studies: NAME.global, NAME.block)")
    parser.add_argument(
        "--trials",
        type=int,
        help="trials per stage (default 36 global, 40 per block; the global stage starts with the ReLU "
        "baseline and the paper's 30-value grid, which is left out below 31 trials)",
    )
    parser.add_argument("--fresh", action="store_true", help="delete the quickstart's studies first and start over")
    parser.add_argument("--print-pipeline", action="store_true", help="print the pipeline as YAML and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")


def _quickstart(args: argparse.Namespace) -> CommandResult:
    from ct_tune.pipelines import checked_quickstart, quickstart_pipeline, run_quickstart

    if args.print_pipeline:
        checked_quickstart(args.name, trials=args.trials, workers=args.workers, oversubscribe=args.oversubscribe)
        definition = quickstart_pipeline(args.name, trials=args.trials)
        text = yaml.safe_dump(definition, sort_keys=False)
        return CommandResult({"pipeline": definition}, lambda: print(text, end=""))
    result = run_quickstart(
        name=args.name,
        trials=args.trials,
        workers=args.workers,
        oversubscribe=args.oversubscribe,
        fresh=args.fresh,
        progress=not args.no_progress,
    )
    return CommandResult(result.to_dict(), lambda: _render(result))


# What one run can and cannot show (README "Quickstart" has the numbers over 5 runs).
CLOSING = (
    "one run: the ReLU baseline row is the same in every run on this machine (a 1-thread pretraining, the fixed "
    "split and probe); the searched rows depend on which worker asks Optuna first and can move from run to run, "
    "and 1,000 test images do not tell apart differences of a point or so. Whether a gain holds needs "
    "replicates: ct-tune pipeline run pipelines/digits-to-mnist5k-transfer.yaml --seeds 0,1,2"
)


def _render(result: Any) -> None:
    """The pipeline's table and report, then what they can and cannot show."""
    from ct_tune.cli.pipeline import render_pipeline

    render_pipeline(result)
    print(CLOSING)
