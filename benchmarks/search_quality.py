"""Search quality, offline: every way ct-tune picks betas against the network's own activation, over seeds.

    python benchmarks/search_quality.py [--task T] [--seeds 0,1,2,3,4] [--quick] [--methods a,b] [--root DIR]
        [--json PATH]

Each method is a stage of one pipeline, and the seeds are one replicate set of it: the script builds the
pipeline and calls ``run_pipeline(seeds=...)``, which is what ``ct-tune pipeline run --seeds`` runs, so the
table below is the combined report a user gets (each seed's split and sampler seeded with it, every method
choosing on val only, its choice scored once on test, the gain over the baseline paired on the same test
samples, a 95% t-interval over seeds) with what each method cost beside it.

Tasks (the small built-in ResNet; 8x8 and 28x28 digits):

* ``digits-mnist5k``: pretrained on digits, frozen, a linear probe on mnist5k (2,000 images fit the probe);
* ``mnist5k-digits``: pretrained on mnist5k, a linear probe on digits;
* ``mnist5k-robust``: pretrained on mnist5k (one checkpoint per seed, so no test image was trained on), its
  own classifier. The searches maximise PGD-10 robust accuracy (Linf 8/255) on val with clean accuracy at most
  0.01 below the baseline's (the constrained form, ``constraints: [{name: accuracy, max_drop: 0.01}]``); test
  reports both. Trained CT trains and is scored on clean accuracy (an attack is not trainable here). Per seed,
  the searched profile with the largest PGD test gain (if one gained) is attacked with standard AutoAttack
  (with the gradient-free Square attack), and so is the baseline, on the same test samples, PGD beside it: a
  PGD gain AutoAttack does not confirm is gradient masking. Every val evaluation runs the attack, so its
  budget is smaller (``ROBUST``).

``--activation silu`` / ``gelu`` runs ``digits-mnist5k`` on the same ResNet with SiLU / GELU, pretrained the
same way: the baseline is the network's own activation, the grid is the paper's around its beta0, TPE starts
from it and trained CT starts there.

Methods (stages): ``grid`` (the baseline and the paper's 30 betas, 0.70 .. 0.99); ``tpe-global`` /
``tpe-stage`` / ``tpe-block`` (TPE from the baseline); ``grid-block`` (per-block TPE warm-started +-0.15
around the grid's best); ``trained-block`` / ``trained-channel`` (CT's parameters trained by gradient on the
train split, best val epoch kept); ``trained-block-search`` (per-block TPE warm-started +-0.15 around the
trained block profile, c = 0.5). A method that builds on another runs it too; its cost includes it.

Stores (Optuna, MLflow, trained profiles, checkpoints) live in ``--root`` (default: a scratch folder). With a
kept ``--root`` the set resumes stage by stage, and seeds can run in several processes at once
(``--seeds 0,1,2`` and ``--seeds 3,4``): a last run with every seed reuses what they made and reports over all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ct_tune  # noqa: F401  (first: makes torchvision importable)
from ct_tune import InputError
from ct_tune.bench import Bench
from ct_tune.evidence import ReportRow
from ct_tune.models import ACTIVATIONS
from ct_tune.objectives import make_objective
from ct_tune.pipelines import (
    ReplicateResult,
    ReplicateRow,
    parse_seeds,
    pipeline_from_dict,
    run_pipeline,
    seed_pipeline,
    stage_spec,
)

import torch
from _common import pretrained_checkpoint, pretrained_digits_checkpoint

METHODS = [
    "grid",
    "tpe-global",
    "tpe-stage",
    "tpe-block",
    "grid-block",
    "trained-block",
    "trained-channel",
    "trained-block-search",
]
BUILDS_ON = {"grid-block": "grid", "trained-block-search": "trained-block"}
TASKS = ["digits-mnist5k", "mnist5k-digits", "mnist5k-robust"]
WIDTH = 0.15  # warm-start ranges: +- this around the earlier best
GRID_TRIALS = 31  # the baseline and the paper's 30 betas


@dataclass(frozen=True)
class Budget:
    trials: int  # TPE trials from the baseline
    warm_trials: int  # per-block TPE trials after a first stage (grid-block, trained-block-search)
    epochs: int  # trained CT
    lr_step: int | None  # the learning rates / 10 after this epoch
    pgd_n: int  # val and test samples attacked per evaluation (robust task)
    pgd_steps: int
    autoattack_n: int  # test samples of the AutoAttack check (a seeded draw, the same for every profile)


FULL = Budget(trials=93, warm_trials=62, epochs=8, lr_step=5, pgd_n=1000, pgd_steps=10, autoattack_n=100)
# The robust task runs 28x28 images and attacks every val evaluation (PGD-10 on 150 samples: about 7 s on one
# core here, against 0.9 s for a digits -> mnist5k probe), so its full budget is smaller.
ROBUST = Budget(trials=20, warm_trials=9, epochs=4, lr_step=3, pgd_n=150, pgd_steps=10, autoattack_n=100)
QUICK = Budget(trials=12, warm_trials=6, epochs=2, lr_step=None, pgd_n=100, pgd_steps=5, autoattack_n=20)


def budget_for(task: str, quick: bool) -> Budget:
    return QUICK if quick else ROBUST if task == "mnist5k-robust" else FULL


# -- the pipeline ------------------------------------------------------------------------------------------
def pipeline(task: str, methods: list[str], budget: Budget, root: Path, activation: str) -> dict[str, Any]:
    """The replicate set's pipeline: a stage per method (and per stage a method builds on)."""
    robust = task == "mnist5k-robust"
    data = {"digits-mnist5k": {"name": "mnist5k", "train_size": 2000}, "mnist5k-digits": {"name": "digits"}}
    base: dict[str, Any] = {
        "model": {"checkpoint": str(checkpoint(task, root, activation))},
        "data": data.get(task, {"name": "mnist5k"}),
        "objectives": [{"name": "probe"}],
        "run": {"device": "cpu", "batch_size": 512},
    }
    if robust:
        pgd = {"name": "adversarial", "attack": "pgd", "eps": "8/255", "steps": budget.pgd_steps, "n": budget.pgd_n}
        base["objectives"] = [{"name": "accuracy"}, pgd]
        base["constraints"] = [{"name": "accuracy", "max_drop": 0.01}]
    stages = [stage(method, budget, robust) for method in with_first_stages(methods)]
    name = f"search-quality-{task}" + ("" if activation == "relu" else f"-{activation}")
    return {"name": name + ("-quick" if budget is QUICK else ""), "base": base, "stages": stages}


def checkpoint(task: str, root: Path, activation: str) -> Path | str:
    """The pretrained model: one per seed for the robust task (a ``{seed}`` path the replicate set fills)."""
    if task == "digits-mnist5k":
        if activation == "relu":
            return pretrained_digits_checkpoint(root)
        return pretrained_checkpoint(root, "digits", activation=activation)
    if task == "mnist5k-digits":
        return pretrained_checkpoint(root, "mnist5k")
    return root / "mnist5k-seed{seed}.pt"


def with_first_stages(methods: list[str]) -> list[str]:
    """The methods in table order, with the stage each builds on."""
    needed = set(methods) | {BUILDS_ON[m] for m in methods if m in BUILDS_ON}
    return [method for method in METHODS if method in needed]


def stage(method: str, budget: Budget, robust: bool) -> dict[str, Any]:
    tpe = {"name": "tpe"}  # the replicate set seeds it
    if method == "grid":
        search = {"granularity": "global", "enqueue_baseline": True, "enqueue_paper_grid": True}
        return {"name": method, "search": search, "sampler": tpe, "budget": {"n_trials": GRID_TRIALS}}
    if method.startswith("tpe-"):
        search = {"granularity": method.removeprefix("tpe-"), "enqueue_baseline": True}
        return {"name": method, "search": search, "sampler": tpe, "budget": {"n_trials": budget.trials}}
    if method in BUILDS_ON:
        return {
            "name": method,
            "warm_start": {"from": BUILDS_ON[method], "width": WIDTH},
            "search": {"granularity": "block"},
            "sampler": tpe,
            "budget": {"n_trials": budget.warm_trials},
        }
    train = {"granularity": method.removeprefix("trained-"), "epochs": budget.epochs, "lr_step": budget.lr_step}
    found: dict[str, Any] = {"name": method, "kind": "train", "train": train}
    if robust:
        found["objectives"] = [{"name": "accuracy"}]
    return found


def pretrain_robust(root: Path, seeds: list[int]) -> None:
    """One mnist5k checkpoint per seed, pretrained on that seed's train split (about 70 s each, idle)."""
    for seed in seeds:
        pretrained_checkpoint(root, "mnist5k", seed=seed)


# -- what each method cost, from the seeds' stage outcomes --------------------------------------------------
@dataclass(frozen=True)
class Cost:
    evaluations: float  # val evaluations per seed (trials; epochs for trained CT), a first stage's included
    seconds: float  # per seed: trial durations, training time


def costs(result: ReplicateResult) -> dict[str, Cost]:
    per_seed: dict[str, list[tuple[int, float]]] = {}
    for run in result.runs.values():
        for outcome in run.stages:
            per_seed.setdefault(outcome.stage, []).append((outcome.finished, outcome.seconds))
    found = {}
    for method, values in per_seed.items():
        evaluations = statistics.mean(v[0] for v in values)
        seconds = statistics.mean(v[1] for v in values)
        first = per_seed.get(BUILDS_ON.get(method, ""))
        if first:
            evaluations += statistics.mean(v[0] for v in first)
            seconds += statistics.mean(v[1] for v in first)
        found[method] = Cost(evaluations, seconds)
    return found


def chosen_val(result: ReplicateResult, row: ReplicateRow) -> float | None:
    """The mean over seeds of the val value the method chose its profile by (its best on that objective)."""
    values = []
    for run in result.runs.values():
        rows = [r for r in run.report if (r.is_baseline if row.is_baseline else r.stage == row.stage)]
        scored = [r.val[row.objective] for r in rows if row.objective in r.val]
        if scored:
            values.append(max(scored))
    return statistics.mean(values) if values else None


def print_tables(result: ReplicateResult, cost: dict[str, Cost], objectives: list[str]) -> None:
    """One table per objective (in ``objectives``' order): each method's cost, test value and gain over the
    baseline, over seeds."""
    seeds = ", ".join(map(str, result.seeds))
    for objective in objectives:
        rows = [row for row in result.rows if row.objective == objective]
        if not rows:
            continue
        print(f"\n{result.name}: {objective} on test, seeds {seeds}; gain = paired test difference with the baseline")
        print(
            f"{'method':<25} {'val evals':>9} {'seconds':>8} {'chosen val':>10} {'test':>7} {'gain':>6} "
            f"{'95% t over seeds':>17} {'positive':>8}  verdict"
        )
        for row in rows:
            method = "baseline (" + ("ReLU" if row.profile == "ReLU baseline" else "own activation") + ")"
            spent = f"{'1':>9} {'':>8}"
            if not row.is_baseline:
                method = row.stage
                spent = f"{cost[method].evaluations:>9.0f} {cost[method].seconds:>8.0f}"
            val = chosen_val(result, row)
            line = f"{method:<25} {spent} {'' if val is None else f'{val:.4f}':>10} {row.test_mean:>7.4f}"
            gain = row.gain
            if gain is not None:
                interval = "n/a" if gain.low is None else f"[{100 * gain.low:+.2f}, {100 * gain.high:+.2f}]"
                line += f" {100 * gain.mean:>+6.2f} {interval:>17} {f'{gain.positive}/{len(gain.gains)}':>8}  "
                line += gain.verdict
            print(line)
    print("\n(gain in points x100; seconds: trial durations and training time per seed, a first stage's included)")


# -- the AutoAttack check (robust task) ---------------------------------------------------------------------
def autoattack_checks(spec: dict[str, Any], result: ReplicateResult, budget: Budget) -> list[dict[str, Any]]:
    """Per seed: the searched profile with the largest PGD test gain (if any gained) and the baseline, under PGD
    and standard AutoAttack on the same ``autoattack_n`` test samples. One profile per seed: an AutoAttack call
    costs minutes here, and the largest gain is the claim most in need of a check."""
    checks = []
    for seed, run in result.runs.items():
        best = _largest_pgd_gain(run.report)
        if best is None:
            print(f"  seed {seed}: no PGD gain over the baseline, so no AutoAttack check", flush=True)
            continue
        checks.append(autoattack_check(spec, seed, best, budget))
        scores = checks[-1]
        print(
            f"  seed {seed} AutoAttack check of {best.stage} on {budget.autoattack_n} test samples: PGD "
            f"{scores['profile']['pgd']:.3f} vs baseline {scores['baseline']['pgd']:.3f}, AutoAttack "
            f"{scores['profile']['autoattack']:.3f} vs baseline {scores['baseline']['autoattack']:.3f}",
            flush=True,
        )
    return checks


def autoattack_check(spec: dict[str, Any], seed: int, row: ReportRow, budget: Budget) -> dict[str, Any]:
    """``row``'s profile and the baseline under PGD and standard AutoAttack, on the seed's bench of its stage."""
    study = stage_spec(seed_pipeline(pipeline_from_dict(spec), seed), row.stage or "")
    pgd = {k: v for k, v in spec["base"]["objectives"][1].items() if k != "name"} | {"n": budget.autoattack_n}
    standard = {"attack": "autoattack", "norm": "linf", "eps": pgd["eps"], "n": budget.autoattack_n}
    objectives = {"pgd": make_objective("adversarial", **pgd), "autoattack": make_objective("adversarial", **standard)}
    scores: dict[str, Any] = {"seed": seed, "stage": row.stage, "betas": row.betas, "c": row.c}
    with Bench.open(study, **study.grouping, device="cpu") as bench:
        assert bench.handle is not None
        for label, betas, c in (("profile", row.betas, row.c), ("baseline", bench.handle.baselines, "family")):
            bench.handle.update(betas, c=c)
            scores[label] = {
                name: bench.evaluator("test", [objective]).evaluate()["adversarial"].value
                for name, objective in objectives.items()
            }
    return scores


def _largest_pgd_gain(report: list[ReportRow]) -> ReportRow | None:
    gains = {
        index: versus.comparison.diff.estimate
        for index, row in enumerate(report)
        if not row.is_baseline and (versus := (row.vs_relu or {}).get("adversarial")) is not None
    }
    best = max(gains, key=lambda index: gains[index], default=None)
    return None if best is None or gains[best] <= 0 else report[best]


# -- the command --------------------------------------------------------------------------------------------
def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=TASKS, default="digits-mnist5k", help="default: digits-mnist5k")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="distinct seeds >= 0, like 0,1,2 (default 0,1,2,3,4)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets to check the script (minutes)")
    parser.add_argument("--methods", help=f"comma-separated subset of: {','.join(METHODS)} (default: all)")
    parser.add_argument("--json", help="write the replicate set's report and each method's cost here")
    parser.add_argument("--no-autoattack", action="store_true", help="robust task: skip the AutoAttack check")
    parser.add_argument("--root", help="where the stores and checkpoints are kept (default: a scratch folder)")
    parser.add_argument(
        "--activation",
        choices=ACTIVATIONS,
        default="relu",
        help="the network's activation (default: relu); silu and gelu run digits-mnist5k only",
    )
    args = parser.parse_args()
    try:
        args.seeds = parse_seeds(args.seeds)
    except InputError as error:
        parser.error(str(error))
    methods = args.methods.split(",") if args.methods else METHODS
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if not any(m == "grid" or m.startswith("tpe-") for m in methods):
        parser.error("--methods needs grid or a tpe- method: the baseline is their first trial")
    args.methods = methods
    if args.activation != "relu" and args.task != "digits-mnist5k":
        parser.error(f"--activation {args.activation} runs --task digits-mnist5k only")
    return args


def main() -> None:
    args = arguments()
    budget = budget_for(args.task, args.quick)
    started = time.perf_counter()
    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), python {platform.python_version()}"
    )
    print(f"command: python benchmarks/search_quality.py {' '.join(sys.argv[1:])}")
    print(f"budget: {budget}", flush=True)
    with tempfile.TemporaryDirectory(prefix="search-quality-") as scratch:
        root = Path(args.root or scratch).resolve()
        root.mkdir(parents=True, exist_ok=True)
        if args.task == "mnist5k-robust":
            pretrain_robust(root, args.seeds)
        spec = pipeline(args.task, args.methods, budget, root, args.activation)
        result = run_pipeline(
            spec,
            seeds=args.seeds,
            storage=f"sqlite:///{root}/optuna.db",
            tracking_uri=f"sqlite:///{root}/mlflow.db",
            profile_dir=root / "profiles",
            progress=False,
            say=lambda line: print(line, flush=True),
        )
        cost = costs(result)
        constrained = [bound["name"] for bound in spec["base"].get("constraints", [])]
        optimised = [o["name"] for o in spec["base"]["objectives"] if o["name"] not in constrained]
        print_tables(result, cost, optimised + constrained)
        checks = []
        if args.task == "mnist5k-robust" and not args.no_autoattack:
            checks = autoattack_checks(spec, result, budget)
    seconds = time.perf_counter() - started
    print(f"\nwall time: {seconds:.0f} s ({seconds / 3600:.2f} h)")
    if args.json:
        found = {
            "argv": sys.argv[1:],
            "budget": asdict(budget),
            "replicates": result.to_dict(),
            "cost": {method: asdict(each) for method, each in cost.items()},
            "autoattack": checks,
            "seconds": seconds,
        }
        Path(args.json).write_text(json.dumps(found, indent=1, default=float))


if __name__ == "__main__":
    main()
