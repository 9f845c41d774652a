"""Trials/hour and best feasible value of the constrained mnist5k robustness study, with and without the
Wilcoxon pruner, measured side by side in one run.

    python benchmarks/wilcoxon_pruning.py [--trials 24] [--rounds 4] [--checkpoint-dir DIR]

The study is the global-then-block robustness pipeline's search (``pipelines/mnist5k-robustness.yaml``: the
small ResNet pretrained on mnist5k, PGD-10 Linf 0.1 on 500 val samples) in its constrained form: maximise
robust accuracy with clean accuracy at most 0.01 below the ReLU baseline's, per block, TPE from the baseline.
Two studies differ only in their pruner (``none`` / ``wilcoxon``, p 0.1, chunks of 50 samples; both score in
batches of 50 so the chunks cost the same). They run in this process, interleaved: ``--rounds`` rounds, each
giving every arm ``--trials / --rounds`` trials (the arm that goes first alternates), with the same sampler
seed and stores of their own (SQLite, MLflow) under a scratch folder.

Printed per arm: trials finished (pruned ones included), seconds inside trials (the sum of the trials'
own durations: not the model and data loading of each round), trials per hour, pruned count, and the best
feasible val robust accuracy with its binomial standard error over the 500 attacked samples; then the
trials/hour ratio and whether the best values differ by more than noise (2 standard errors of their
difference). Equal trial budgets: the pruner's saving is time; quality is checked, not traded.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import ct_tune
from ct_tune.tracking.keys import ATTR_FEASIBLE

from _common import pretrained_checkpoint
from optuna.trial import TrialState

ATTACKED = 500
CHUNK = 50


def spec(checkpoint: Path, pruner: dict, n_trials: int) -> dict:
    return {
        "model": {"checkpoint": str(checkpoint)},
        "data": {"name": "mnist5k", "seed": 0},
        "objectives": [
            {"name": "accuracy"},
            {"name": "adversarial", "norm": "linf", "eps": 0.1, "steps": 10, "restarts": 1, "n": ATTACKED},
        ],
        "constraints": [{"name": "accuracy", "max_drop": 0.01}],
        "search": {"granularity": "block", "enqueue_baseline": True},
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 6},
        "pruner": pruner,
        "budget": {"n_trials": n_trials},
        "run": {"device": "cpu", "batch_size": CHUNK},
    }


def outcome(study: ct_tune.Study, seconds: float) -> dict:
    trials = study.optuna_study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    feasible = [t.value for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get(ATTR_FEASIBLE)]
    best = max(feasible) if feasible else float("nan")
    return {
        "trials": len(finished),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "seconds": seconds,
        "per_hour": len(finished) / seconds * 3600,
        "best": best,
        "se": math.sqrt(best * (1 - best) / ATTACKED) if feasible else float("nan"),
        "feasible": len(feasible),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24, help="finished trials per arm")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (trials split evenly)")
    parser.add_argument("--checkpoint-dir", help="where the mnist5k checkpoint is, or is trained (default: scratch)")
    args = parser.parse_args()
    arms = {"none": {"name": "none"}, "wilcoxon": {"name": "wilcoxon", "p_threshold": 0.1, "chunk": CHUNK}}
    with tempfile.TemporaryDirectory(prefix="wilcoxon-") as scratch:
        root = Path(scratch)
        checkpoint = pretrained_checkpoint(Path(args.checkpoint_dir or scratch), "mnist5k")
        studies = {}
        for arm, pruner in arms.items():
            stores = {"storage": f"sqlite:///{root}/{arm}.db", "tracking_uri": f"sqlite:///{root}/{arm}-mlflow.db"}
            studies[arm] = ct_tune.create_study(spec(checkpoint, pruner, args.trials), name=arm, **stores)
        seconds = dict.fromkeys(arms, 0.0)
        per_round = math.ceil(args.trials / args.rounds)
        for index in range(args.rounds):
            order = list(arms) if index % 2 == 0 else list(reversed(arms))
            for arm in order:
                started = time.perf_counter()
                summary = studies[arm].run(n_trials=per_round, workers=1, progress=False)
                seconds[arm] += sum(line.seconds for line in summary.trials)
                print(f"round {index + 1} {arm}: {summary.finished} trials, {time.perf_counter() - started:.0f} s")
        results = {arm: outcome(studies[arm], seconds[arm]) for arm in arms}
    print(
        f"\n{'pruner':<10} {'trials':>6} {'pruned':>6} {'s in trials':>11} {'trials/h':>9} {'best feasible (se)':>20}"
    )
    for arm, r in results.items():
        best = f"{r['best']:.4f} ({r['se']:.4f})"
        line = f"{arm:<10} {r['trials']:>6} {r['pruned']:>6} {r['seconds']:>11.0f} {r['per_hour']:>9.0f} {best:>20}"
        print(f"{line}  [{r['feasible']} feasible]")
    none, wil = results["none"], results["wilcoxon"]
    noise = 2 * math.hypot(none["se"], wil["se"])
    diff = wil["best"] - none["best"]
    verdict = "within noise" if abs(diff) <= noise else "beyond noise"
    print(f"trials/hour ratio wilcoxon/none: {wil['per_hour'] / none['per_hour']:.2f}")
    print(f"best feasible difference wilcoxon - none: {diff:+.4f} ({verdict}: 2 SE = {noise:.4f})")


if __name__ == "__main__":
    main()
