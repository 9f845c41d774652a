"""Search quality, offline: every way ct-tune picks betas against ReLU, on the same splits, over seeds.

    python benchmarks/search_quality.py [--task T ...] [--seeds 5] [--quick] [--methods a,b] [--json PATH]

Tasks (the small built-in ResNet; 8x8 images):

* ``digits-mnist5k``: pretrained on digits, frozen, a linear probe on mnist5k (2,000 images fit the probe);
* ``mnist5k-digits``: pretrained on mnist5k, a linear probe on digits;
* ``mnist5k-robust``: pretrained on mnist5k (one checkpoint per split seed, so no test image was trained on),
  its own classifier: clean accuracy and PGD robust accuracy (Linf 8/255); betas are chosen on val PGD robust
  accuracy; each selected profile is also attacked with AutoAttack (it includes the gradient-free Square
  attack) on the same test samples, to tell a real gain from gradient masking.

Methods: ``relu``; ``grid`` (the paper's: ReLU and beta 0.70..0.99); ``tpe-global`` / ``tpe-stage`` /
``tpe-block`` (TPE from the ReLU baseline); ``grid-block`` (the grid, then per-block TPE warm-started
+-0.15 around its best); ``trained-block`` / ``trained-channel`` (CT's parameters trained by gradient on the
train split, best val epoch kept; on the robust task they train on clean accuracy: an attack is not
trainable here); ``trained-block-search`` (the trained block profile, then per-block TPE warm-started
+-0.15 around its betas, c = 0.5). For seed s every method sees the split of seed s and samples with seed s;
it selects on val only, and its choice is scored once on test.

Per method and metric: the test value, the paired difference to ReLU on the same test samples (a paired
bootstrap interval and McNemar's p per seed), and over seeds the mean gain with a 95% t-interval; the val
evaluations (trials, or epochs + 1) and seconds spent. Runs in this process on in-memory Optuna studies
(no MLflow: this measures the search, not the bookkeeping).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ct_tune  # noqa: F401  (first: makes torchvision importable)
from ct_tune.objectives import make_objective
from ct_tune.search._bench import Bench
from ct_tune.search._evidence import compare
from ct_tune.search._pipeline_spec import map_profile, warm_start_ranges
from ct_tune.search._samplers import build_sampler
from ct_tune.search._space import beta_param, param_names, suggest, uniform_params
from ct_tune.search._spec import AdversarialSpec, paper_grid, spec_from_dict
from ct_tune.search._trained import train_ct

import optuna
import torch
from _common import pretrained_checkpoint, pretrained_digits_checkpoint
from scipy.stats import t as student_t

METHODS = [
    "relu",
    "grid",
    "tpe-global",
    "tpe-stage",
    "tpe-block",
    "grid-block",
    "trained-block",
    "trained-channel",
    "trained-block-search",
]
TASKS = ["digits-mnist5k", "mnist5k-digits", "mnist5k-robust"]
WIDTH = 0.15  # warm-start ranges: +- this around the earlier best


@dataclass(frozen=True)
class Budget:
    grid: list[float]
    trials: int  # TPE trials; the warm-started searches get trials - len(grid) after their first stage
    epochs: int
    lr_step: int | None
    pgd_n: int
    pgd_steps: int


FULL = Budget(paper_grid(), trials=93, epochs=8, lr_step=5, pgd_n=1000, pgd_steps=10)
QUICK = Budget(paper_grid()[::5], trials=12, epochs=2, lr_step=None, pgd_n=100, pgd_steps=5)


def pgd_objective(budget: Budget) -> dict[str, Any]:
    return {"name": "adversarial", "attack": "pgd", "eps": 8 / 255, "steps": budget.pgd_steps, "n": budget.pgd_n}


def autoattack_objective(pgd: dict[str, Any]):
    """AutoAttack (standard version) on the PGD objective's samples and budget: the one place that names it,
    so it follows the spec validation (``AdversarialSpec``) of ``objectives: [{name: adversarial, ...}]``."""
    spec = AdversarialSpec.model_validate({**pgd, "attack": "autoattack"}).model_dump(exclude={"name", "direction"})
    return make_objective("adversarial", **spec)


@dataclass
class Candidate:
    """A profile as it was scored on val: its values at a granularity (c = 0.5 unless trained)."""

    val: float
    values: dict[str, Any]
    granularity: str
    trained: bool = False


@dataclass
class Outcome:
    """One method on one seed: its selected profile, what the selection cost and its test results."""

    chosen: Candidate
    evaluations: int
    seconds: float
    test: dict[str, Any] = field(default_factory=dict)  # metric -> ObjectiveResult


class Seed:
    """One task at one seed: the model and split, a bench per granularity, and the methods' runs."""

    def __init__(self, task: str, seed: int, budget: Budget, root: Path) -> None:
        self.task, self.seed, self.budget = task, seed, budget
        robust = task == "mnist5k-robust"
        if task == "digits-mnist5k":
            checkpoint, data = pretrained_digits_checkpoint(root), {"name": "mnist5k", "train_size": 2000}
        elif task == "mnist5k-digits":
            checkpoint, data = pretrained_checkpoint(root, "mnist5k"), {"name": "digits"}
        else:
            checkpoint, data = pretrained_checkpoint(root, "mnist5k", seed=seed), {"name": "mnist5k"}
        self.model = {"checkpoint": str(checkpoint)}
        self.data = {**data, "seed": seed}
        self.run = {"device": "cpu", "batch_size": 512}
        self.pgd = pgd_objective(budget)
        self.objectives = [{"name": "accuracy"}, self.pgd] if robust else [{"name": "probe"}]
        self.select = "adversarial" if robust else "probe"  # what val selection maximises
        self.train_objective = "accuracy" if robust else "probe"
        self.metrics = {"pgd": "adversarial", "clean": "accuracy"} if robust else {"probe": "probe"}
        self.benches: dict[str, Bench] = {}
        self.evaluations = 0
        self.outcomes: dict[str, Outcome] = {}
        self._histories: dict[str, list[Candidate]] = {}  # a first stage's val history, for the stage after it

    def spec(self, granularity: str, ranges: dict | None = None):
        search: dict[str, Any] = {"granularity": granularity, "enqueue_baseline": not ranges}
        if ranges:
            search["ranges"] = ranges
        return spec_from_dict(
            {
                "model": self.model,
                "data": self.data,
                "search": search,
                "objectives": self.objectives,
                "sampler": {"name": "tpe", "seed": self.seed},
                "run": self.run,
                "budget": {"n_trials": 1},
            }
        )

    def bench(self, granularity: str) -> Bench:
        if granularity not in self.benches:
            self.benches[granularity] = Bench.open(self.spec(granularity), device="cpu")
        return self.benches[granularity]

    def _apply(self, candidate: Candidate) -> Bench:
        bench = self.bench(candidate.granularity)
        assert bench.handle is not None
        if candidate.trained:
            bench.handle.update(candidate.values)
        else:
            bench.handle.update(candidate.values, c=0.5)
        return bench

    def val(self, granularity: str, betas: dict[str, float]) -> Candidate:
        candidate = Candidate(0.0, betas, granularity)
        self.evaluations += 1
        candidate.val = self._apply(candidate).evaluator("val").evaluate()[self.select].value
        return candidate

    def test(self, candidate: Candidate, autoattack: bool) -> dict[str, Any]:
        bench = self._apply(candidate)
        results = bench.evaluator("test").evaluate()
        scored = {metric: results[name] for metric, name in self.metrics.items()}
        if autoattack:
            scored["autoattack"] = bench.evaluator("test", [autoattack_objective(self.pgd)]).evaluate()["adversarial"]
        return scored

    # -- the methods; each returns its val history (a trained profile is one entry) -------------------------
    def grid(self) -> list[Candidate]:
        return [self.val("global", {"global": beta}) for beta in [1.0, *self.budget.grid]]

    def tpe(self, granularity: str, trials: int, warm: dict[str, float] | None = None) -> list[Candidate]:
        units = self.bench(granularity).units
        if warm is None:
            spec, enqueued = self.spec(granularity), [dict.fromkeys(units, 1.0)]
        else:
            spec, enqueued = self.spec(granularity, warm_start_ranges([warm], WIDTH, 0.7, 1.0)), [warm]
        study = optuna.create_study(direction="maximize", sampler=build_sampler(spec, param_names(spec, units)))
        for betas in enqueued:
            params = uniform_params(1.0, spec, units)
            for unit, value in betas.items():
                beta = spec.search.range_of(unit)
                params[beta_param(unit)] = min(max(value, beta.low), beta.high)
            study.enqueue_trial(params)
        history: list[Candidate] = []

        def objective(trial: optuna.Trial) -> float:
            betas, _ = suggest(trial, spec, units)
            history.append(self.val(granularity, betas))
            return history[-1].val

        study.optimize(objective, n_trials=trials)
        return history

    def trained(self, granularity: str) -> list[Candidate]:
        settings = {
            "granularity": granularity,
            "epochs": self.budget.epochs,
            "lr_step": self.budget.lr_step,
            "seed": self.seed,
        }
        result = train_ct(
            model=self.model, data=self.data, objective=self.train_objective, run=self.run, settings=settings
        )
        self.evaluations += len(result.history) + 1  # the baseline and each epoch
        profile = result.profile
        unit_granularity = profile.unit_granularity
        values = profile.steering_values()
        if self.select != self.train_objective:  # robust: the epoch was kept on clean val; select on the attack
            candidate = Candidate(0.0, values, unit_granularity, trained=True)
            self.evaluations += 1
            candidate.val = self._apply(candidate).evaluator("val").evaluate()[self.select].value
            return [candidate]
        return [Candidate(result.value, values, unit_granularity, trained=True)]

    def run_method(self, method: str) -> Outcome:
        """``method``'s selection (the earliest best val), counting the cost of a stage it builds on."""
        if method in self.outcomes:
            return self.outcomes[method]
        started, evaluations = time.perf_counter(), self.evaluations
        extra_seconds, extra_evaluations = 0.0, 0
        later = self.budget.trials - len(self.budget.grid) - 1
        if method == "relu":
            history = [self.val("global", {"global": 1.0})]
        elif method == "grid":
            history = self._history("grid", self.grid)
        elif method.startswith("tpe-"):
            history = self.tpe(method.removeprefix("tpe-"), self.budget.trials)
        elif method in ("trained-block", "trained-channel"):
            history = self._history(method, lambda: self.trained(method.removeprefix("trained-")))
        else:  # grid-block, trained-block-search: the first stage, then block TPE from its best
            first = "grid" if method == "grid-block" else "trained-block"
            before = self.run_method(first)
            extra_seconds, extra_evaluations = before.seconds, before.evaluations
            started, evaluations = time.perf_counter(), self.evaluations
            history = [*self._histories[first], *self.tpe("block", later, warm=self._warm(before.chosen))]
        chosen = max(history, key=lambda c: c.val)  # max keeps the first of equal values
        outcome = Outcome(
            chosen, self.evaluations - evaluations + extra_evaluations, time.perf_counter() - started + extra_seconds
        )
        self.outcomes[method] = outcome
        return outcome

    def _history(self, name: str, make: Callable[[], list[Candidate]]) -> list[Candidate]:
        self._histories[name] = make()
        return self._histories[name]

    def _warm(self, chosen: Candidate) -> dict[str, float]:
        """The chosen profile's betas per block (channels averaged over their site, sites over their block)."""
        betas = {
            unit: float(value.values()[0].double().mean()) if hasattr(value, "values") else float(value)
            for unit, value in chosen.values.items()
        }
        block = self.bench("block")
        return map_profile(block.model.net, block.trace, betas, chosen.granularity, "block")

    def close(self) -> None:
        for bench in self.benches.values():
            bench.close()


def run_task(task: str, seeds: int, methods: list[str], budget: Budget, root: Path, autoattack: bool) -> dict:
    """Every method on every seed; per seed the test results and the paired comparison with ReLU."""
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for seed in range(seeds):
        state = Seed(task, seed, budget, root)
        try:
            for granularity in _granularities(methods):  # loaded before any method's clock starts
                state.bench(granularity)
            baseline = state.run_method("relu")
            baseline.test = state.test(baseline.chosen, autoattack and task == "mnist5k-robust")
            for method in methods:
                outcome = state.run_method(method)
                if not outcome.test:
                    outcome.test = state.test(outcome.chosen, autoattack and task == "mnist5k-robust")
                record: dict[str, Any] = {
                    "seed": seed,
                    "val": outcome.chosen.val,
                    "evaluations": outcome.evaluations,
                    "seconds": outcome.seconds,
                }
                for metric, result in outcome.test.items():
                    comparison = compare(a=result.correct.cpu().numpy(), b=baseline.test[metric].correct.cpu().numpy())
                    record[metric] = {"test": result.value, "vs_relu": comparison.to_dict()}
                if not outcome.chosen.trained:
                    record["profile"] = {u: round(float(b), 4) for u, b in outcome.chosen.values.items()}
                rows[method].append(record)
                print(
                    f"  {task} seed {seed} {method}: val {outcome.chosen.val:.4f}, "
                    + ", ".join(f"test {m} {r.value:.4f}" for m, r in outcome.test.items())
                    + f" ({outcome.evaluations} evals, {outcome.seconds:.0f} s)",
                    flush=True,
                )
        finally:
            state.close()
    return rows


def _granularities(methods: list[str]) -> list[str]:
    """The benches the methods evaluate on (a channel profile steers per site)."""
    needed = {"global"}
    for method in methods:
        if method in ("tpe-global", "tpe-stage", "tpe-block"):
            needed.add(method.removeprefix("tpe-"))
        elif method in ("grid-block", "trained-block", "trained-block-search"):
            needed.add("block")
        elif method == "trained-channel":
            needed.add("site")
    return sorted(needed)


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and t-interval over seeds (nan bounds with one seed)."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = student_t.ppf((1 + confidence) / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def summarise(rows: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for method, records in rows.items():
        entry: dict[str, Any] = {
            "seeds": len(records),
            "evaluations": statistics.mean(r["evaluations"] for r in records),
            "seconds": statistics.mean(r["seconds"] for r in records),
        }
        metrics = [k for k in records[0] if isinstance(records[0][k], dict) and "vs_relu" in records[0][k]]
        for metric in metrics:
            gains = [r[metric]["vs_relu"]["diff"] for r in records]
            mean, low, high = t_interval(gains)
            entry[metric] = {
                "test": statistics.mean(r[metric]["test"] for r in records),
                "gain": mean,
                "t_low": float(low),
                "t_high": float(high),
                "paired_low": statistics.mean(r[metric]["vs_relu"]["ci_low"] for r in records),
                "paired_high": statistics.mean(r[metric]["vs_relu"]["ci_high"] for r in records),
                "within_noise": None if math.isnan(low) else bool(low <= 0 <= high),
            }
        summary[method] = entry
    return summary


def print_table(task: str, summary: dict[str, dict[str, Any]]) -> None:
    metrics = [k for k in next(iter(summary.values())) if isinstance(next(iter(summary.values()))[k], dict)]
    seeds = next(iter(summary.values()))["seeds"]
    print(f"\n{task}, {seeds} seed(s); gain = test minus ReLU's on the same samples, in points (x100)")
    head = f"{'method':<22} {'evals':>6} {'seconds':>8}"
    for metric in metrics:
        head += f" | {metric + ' test':>11} {'gain':>6} {'95% t over seeds':>17} {'mean paired 95%':>16}"
    print(head)
    for method, entry in summary.items():
        line = f"{method:<22} {entry['evaluations']:>6.0f} {entry['seconds']:>8.0f}"
        for metric in metrics:
            m = entry[metric]
            t_text = f"[{100 * m['t_low']:+.2f}, {100 * m['t_high']:+.2f}]"
            t_text = "n/a (1 seed)" if math.isnan(m["t_low"]) else t_text
            paired = f"[{100 * m['paired_low']:+.2f}, {100 * m['paired_high']:+.2f}]"
            line += f" | {m['test']:>11.4f} {100 * m['gain']:>+6.2f} {t_text:>17} {paired:>16}"
        print(line)
    for method, entry in summary.items():
        if method == "relu":
            continue
        verdicts = []
        for metric in metrics:
            m = entry[metric]
            if m["within_noise"] is None:
                verdicts.append(f"{metric}: one seed, no interval over seeds")
            elif m["within_noise"]:
                verdicts.append(f"{metric}: within noise ({100 * m['gain']:+.2f} points, the interval holds 0)")
            else:
                word = "gain" if m["gain"] > 0 else "loss"
                verdicts.append(f"{metric}: a {word} of {100 * m['gain']:+.2f} points beyond noise")
        print(f"  {method}: " + "; ".join(verdicts))
    print(
        "  (95% t: a t-interval of the per-seed paired gains over seeds; mean paired 95%: the mean over seeds of the "
        "per-seed paired bootstrap intervals on test samples)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", action="append", choices=TASKS, help="repeatable (default: all three)")
    parser.add_argument("--seeds", type=int, help="split and sampler seeds 0..N-1 (default 5; 2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets to check the script (minutes)")
    parser.add_argument("--methods", help=f"comma-separated subset of: {','.join(METHODS)}")
    parser.add_argument("--json", help="write every per-seed result and the summaries here")
    parser.add_argument("--no-autoattack", action="store_true", help="robust task: skip the AutoAttack check")
    parser.add_argument("--root", help="where pretrained checkpoints are kept (default: a temporary folder)")
    args = parser.parse_args()
    methods = args.methods.split(",") if args.methods else METHODS
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    methods = [m for m in METHODS if m in methods and m != "relu"]
    seeds = args.seeds or (2 if args.quick else 5)
    budget = QUICK if args.quick else FULL
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), python {platform.python_version()}"
    )
    print(f"command: python benchmarks/search_quality.py {' '.join(sys.argv[1:])}")
    print(
        f"budget: grid {len(budget.grid) + 1} trials, TPE {budget.trials} trials, trained {budget.epochs} epochs, "
        f"PGD n={budget.pgd_n} steps={budget.pgd_steps}; seeds 0..{seeds - 1}",
        flush=True,
    )
    results: dict[str, Any] = {"argv": sys.argv[1:], "budget": budget.__dict__, "tasks": {}}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.root) if args.root else Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        for task in args.task or TASKS:
            rows = run_task(task, seeds, ["relu", *methods], budget, root, not args.no_autoattack)
            summary = summarise(rows)
            print_table(task, summary)
            results["tasks"][task] = {"rows": rows, "summary": summary}
    results["seconds"] = time.perf_counter() - started
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    print(f"\nwall time: {results['seconds']:.0f} s ({results['seconds'] / 3600:.2f} h)")


if __name__ == "__main__":
    main()
