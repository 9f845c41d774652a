"""Trials per minute with 1 and 2 worker processes on the same study, where a trial's time goes, and
whether a worker's memory grows over 50 trials.

    python benchmarks/workers.py [--trials 30] [--rounds 2] [--objective accuracy] [--checkpoint PATH]

Each round creates two fresh, identical studies (SQLite storage and MLflow store in a temporary
directory, the small built-in ResNet on digits, per-block betas, TPE) and runs one with 1 worker and one
with 2 worker processes, alternating so that machine noise hits both alike. Throughput is measured
between the first and the last finished trial (start-up excluded). The per-trial split comes from the
workers: evaluating the model, MLflow calls, Optuna (sampling, storage reads and writes, heartbeats).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import ct_tune
from ct_tune.bench import Bench
from ct_tune.search._loop import LoopSettings, TrialLoop

from _common import pretrained_checkpoint


def make_study(root: Path, checkpoint: Path, objective: str, trials: int, name: str) -> ct_tune.Study:
    spec = {
        "model": {"checkpoint": str(checkpoint)},
        "data": {"name": "digits"},
        "search": {"granularity": "block", "enqueue_baseline": True},
        "objectives": [objective],
        "sampler": {"name": "tpe", "seed": 0},
        "budget": {"n_trials": trials},
        "run": {"device": "cpu"},
    }
    return ct_tune.create_study(
        spec, name=name, storage=f"sqlite:///{root}/{name}-optuna.db", tracking_uri=f"sqlite:///{root}/{name}-mlflow.db"
    )


def run_workers(root: Path, study: ct_tune.Study, workers: int) -> dict:
    summary = study.run(workers=workers, devices="cpu", progress=False, log_dir=root / f"logs-{study.name}")
    stamps = sorted(line.ended for line in summary.trials)
    per_trial = {kind: summary.seconds[kind] / len(stamps) for kind in ("evaluate", "tracking", "optuna")}
    return {"per_minute": 60 * (len(stamps) - 1) / (stamps[-1] - stamps[0]), "per_trial": per_trial}


def memory_over_trials(root: Path, checkpoint: Path, objective: str, trials: int) -> list[float]:
    study = make_study(root, checkpoint, objective, trials, "memory")
    rss: list[float] = []
    settings = LoopSettings(target_total=trials, refresh_plots=False, on_trial=lambda line: rss.append(line.rss_mb))
    with Bench.open(study.spec, **study.spec.grouping, device="cpu") as bench:
        TrialLoop(study, bench, study.tracker, settings).run()
    return rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--objective", default="accuracy", choices=["accuracy", "probe", "adversarial"])
    parser.add_argument("--memory-trials", type=int, default=50)
    parser.add_argument("--checkpoint", help="a digits checkpoint (default: pretrain one now, ~20 s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        checkpoint = Path(args.checkpoint) if args.checkpoint else pretrained_checkpoint(root)
        measured: dict[int, list[dict]] = {1: [], 2: []}
        for round_ in range(args.rounds):
            for workers in (1, 2):
                study = make_study(root, checkpoint, args.objective, args.trials, f"r{round_}w{workers}")
                measured[workers].append(run_workers(root, study, workers))
        rss = memory_over_trials(root, checkpoint, args.objective, args.memory_trials)

    print(
        f"digits, cifar_resnet_small, per-block betas, objective {args.objective}, {args.trials} trials, "
        f"{args.rounds} rounds, SQLite storage and MLflow store, 2 CPU cores"
    )
    rates = {w: statistics.median(m["per_minute"] for m in runs) for w, runs in measured.items()}
    for workers, runs in measured.items():
        split = {k: statistics.median(m["per_trial"][k] for m in runs) for k in ("evaluate", "tracking", "optuna")}
        total = sum(split.values())
        print(
            f"{workers} worker(s): {rates[workers]:6.1f} trials/min; per trial {total * 1000:6.0f} ms = "
            f"evaluate {split['evaluate'] * 1000:5.0f} ms, MLflow {split['tracking'] * 1000:5.0f} ms "
            f"({split['tracking'] / total:4.0%}), Optuna storage+sampler {split['optuna'] * 1000:5.0f} ms "
            f"({split['optuna'] / total:4.0%})"
        )
    print(f"2 workers / 1 worker: {rates[2] / rates[1]:.2f}x trials per minute")
    marks = [i for i in (1, 10, 25, 50, len(rss)) if i <= len(rss)]
    print("worker RSS over trials: " + ", ".join(f"trial {i}: {rss[i - 1]:.0f} MB" for i in dict.fromkeys(marks)))
    print(f"RSS change from trial 10 to {len(rss)}: {rss[-1] - rss[min(9, len(rss) - 1)]:+.1f} MB")


if __name__ == "__main__":
    main()
