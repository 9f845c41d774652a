"""Trials/hour and best feasible value of the constrained robustness study, with and without the Wilcoxon
pruner, measured side by side in one run.

    python benchmarks/wilcoxon_pruning.py [--data mnist5k|digits] [--checkpoint PATH] [--trials 24] [--rounds 4]
        [--attacked N] [--chunk 25] [--seed 0]

The study is a robustness pipeline's per-block search (``pipelines/mnist5k-robustness.yaml``: the small
ResNet pretrained on mnist5k, PGD-10 Linf 8/255 on 500 val samples; ``--data digits``:
``pipelines/digits-robustness.yaml``, on 300) in its constrained form: maximise robust accuracy
with clean accuracy at most 0.01 below the ReLU baseline's, TPE from the baseline. Two studies differ only
in their pruner (``none`` / ``wilcoxon``, p 0.1, chunks of 25 samples; both score in batches of 25 so the
chunks cost the same). Without ``--checkpoint`` the model is pretrained first (about 70 s for mnist5k on an
idle 2-core machine). They run in this process, interleaved: ``--rounds`` rounds, each
giving every arm ``--trials / --rounds`` trials (the arm that goes first alternates), with the same sampler
seed and stores of their own (SQLite, MLflow) under a scratch folder.

Printed per arm: trials finished (pruned ones included), seconds inside trials (the sum of the trials'
own durations: not the model and data loading of each round), trials per hour, pruned count, and the best
feasible val robust accuracy with its binomial standard error over the attacked samples; then the
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

ATTACK = {"mnist5k": (8 / 255, 500), "digits": (8 / 255, 300)}  # the pipelines' eps and attacked samples
CHUNK = 25


def spec(data: str, checkpoint: Path, pruner: dict, n_trials: int, attacked: int, chunk: int, seed: int = 0) -> dict:
    eps = ATTACK[data][0]
    return {
        "model": {"checkpoint": str(checkpoint)},
        "data": {"name": data, "seed": 0},
        "objectives": [
            {"name": "accuracy"},
            {"name": "adversarial", "norm": "linf", "eps": eps, "steps": 10, "restarts": 1, "n": attacked},
        ],
        "constraints": [{"name": "accuracy", "max_drop": 0.01}],
        "search": {"granularity": "block", "enqueue_baseline": True},
        "sampler": {"name": "tpe", "seed": seed, "n_startup_trials": 6},
        "pruner": pruner,
        "budget": {"n_trials": n_trials},
        "run": {"device": "cpu", "batch_size": chunk},
    }


def outcome(study: ct_tune.Study, seconds: float, attacked: int) -> dict:
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
        "se": math.sqrt(best * (1 - best) / attacked) if feasible else float("nan"),
        "feasible": len(feasible),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24, help="finished trials per arm")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (trials split evenly)")
    parser.add_argument("--data", choices=sorted(ATTACK), default="mnist5k", help="which robustness pipeline")
    parser.add_argument("--attacked", type=int, help="attacked val samples (default: the pipeline's)")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed (both arms)")
    parser.add_argument("--chunk", type=int, default=CHUNK, help="samples per Wilcoxon chunk and per batch")
    parser.add_argument("--checkpoint", help="the model pretrained on --data (default: pretrained now)")
    parser.add_argument("--checkpoint-dir", help="where the checkpoint is cached, or is trained (default: scratch)")
    args = parser.parse_args()
    attacked = args.attacked or ATTACK[args.data][1]
    arms = {"none": {"name": "none"}, "wilcoxon": {"name": "wilcoxon", "p_threshold": 0.1, "chunk": args.chunk}}
    with tempfile.TemporaryDirectory(prefix="wilcoxon-") as scratch:
        root = Path(scratch)
        cache = Path(args.checkpoint_dir or scratch)
        checkpoint = Path(args.checkpoint) if args.checkpoint else pretrained_checkpoint(cache, args.data)
        studies = {}
        for arm, pruner in arms.items():
            stores = {"storage": f"sqlite:///{root}/{arm}.db", "tracking_uri": f"sqlite:///{root}/{arm}-mlflow.db"}
            studies[arm] = ct_tune.create_study(
                spec(args.data, checkpoint, pruner, args.trials, attacked, args.chunk, args.seed), name=arm, **stores
            )
        seconds = dict.fromkeys(arms, 0.0)
        per_round = math.ceil(args.trials / args.rounds)
        for index in range(args.rounds):
            order = list(arms) if index % 2 == 0 else list(reversed(arms))
            for arm in order:
                started = time.perf_counter()
                summary = studies[arm].run(n_trials=per_round, workers=1, progress=False)
                seconds[arm] += sum(line.seconds for line in summary.trials)
                print(f"round {index + 1} {arm}: {summary.finished} trials, {time.perf_counter() - started:.0f} s")
        results = {arm: outcome(studies[arm], seconds[arm], attacked) for arm in arms}
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
