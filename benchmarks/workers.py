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
import time
from pathlib import Path

import ct_tune  # noqa: F401  (first: makes torchvision importable)
from ct_tune.session import Session
from ct_tune.spec import spec_from_dict
from ct_tune.storage import prepare_sqlite
from ct_tune.study import create_study, load_study
from ct_tune.tracking import Tracker
from ct_tune.workers import launch, plan_workers

from _common import pretrained_checkpoint


def make_study(root: Path, checkpoint: Path, objective: str, trials: int, name: str):
    spec = spec_from_dict(
        {
            "model": {"checkpoint": str(checkpoint)},
            "data": {"name": "digits"},
            "search": {"granularity": "block", "enqueue_baseline": True},
            "objectives": [objective],
            "sampler": {"name": "tpe", "seed": 0},
            "budget": {"n_trials": trials},
            "run": {"device": "cpu"},
        }
    )
    storage, tracking = f"sqlite:///{root}/{name}-optuna.db", f"sqlite:///{root}/{name}-mlflow.db"
    prepare_sqlite(storage)
    tracker = Tracker(tracking)
    session = Session.open(spec, device="cpu", steer=False)
    info, _ = create_study(
        spec=spec, name=name, storage_url=storage, tracker=tracker, units=session.units, meta=session.meta()
    )
    return info, tracker


def run_workers(root: Path, info, tracker, workers: int, trials: int) -> dict:
    stamps: list[float] = []
    result = launch(
        info.name,
        plan_workers(workers, "cpu"),
        storage_url=info.storage_url,
        tracking_uri=tracker.tracking_uri,
        target_total=trials,
        deadline=None,
        heartbeat=10,
        grace=None,
        log_dir=root / f"logs-{info.name}",
        on_event=lambda index, event: stamps.append(time.perf_counter()) if event.get("event") == "trial" else None,
    )
    assert all(code == 0 for code in result.exit_codes.values()), result.exit_codes
    per_trial = {
        kind: sum(s["seconds"][kind] for s in result.summaries.values()) / len(stamps)
        for kind in ("evaluate", "tracking", "optuna")
    }
    return {"per_minute": 60 * (len(stamps) - 1) / (stamps[-1] - stamps[0]), "per_trial": per_trial}


def memory_over_trials(root: Path, checkpoint: Path, objective: str, trials: int) -> list[float]:
    from ct_tune.runner import RunSettings, TrialRunner
    from ct_tune.session import StudyBench

    info, tracker = make_study(root, checkpoint, objective, trials, "memory")
    rss: list[float] = []
    session = Session.open(info.spec, device="cpu")
    settings = RunSettings(target_total=trials, refresh_plots=False, on_trial=lambda line: rss.append(line["rss_mb"]))
    TrialRunner(load_study(name="memory", storage_url=info.storage_url), StudyBench(session), tracker, settings).run()
    session.close()
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
                info, tracker = make_study(root, checkpoint, args.objective, args.trials, f"r{round_}w{workers}")
                measured[workers].append(run_workers(root, info, tracker, workers, args.trials))
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
