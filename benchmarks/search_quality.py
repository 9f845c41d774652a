"""Search quality, offline: every way ct-tune picks betas against ReLU, on the same splits, over seeds.

    python benchmarks/search_quality.py [--task T ...] [--seeds 5] [--quick] [--methods a,b] [--json PATH]

Tasks (the small built-in ResNet; 8x8 images):

* ``digits-mnist5k``: pretrained on digits, frozen, a linear probe on mnist5k (2,000 images fit the probe);
* ``mnist5k-digits``: pretrained on mnist5k, a linear probe on digits;
* ``mnist5k-robust``: pretrained on mnist5k (one checkpoint per split seed, so no test image was trained on),
  its own classifier: clean accuracy and PGD-10 robust accuracy (Linf 8/255); betas are chosen on val PGD
  robust accuracy. Per seed, the chosen profile with the largest PGD test gain over ReLU (if one gained) is
  attacked with standard AutoAttack (it includes the gradient-free Square attack), and so is ReLU, on the
  same test samples, with PGD on those samples beside it: a PGD gain AutoAttack does not confirm is
  gradient masking. Its full budget is smaller than the transfers' (``ROBUST``): every val evaluation runs
  the attack.

``--activation silu`` / ``gelu`` runs ``digits-mnist5k`` on the same ResNet with SiLU / GELU, pretrained the
same way: there ``relu`` is the network's own activation (CT at its family's beta0 with c = 1, printed as
"own activation"), the grid is the paper's around beta0, TPE starts from beta0 and trained CT starts there.

Methods: ``relu``; ``grid`` (the paper's: ReLU and beta 0.70..0.99); ``tpe-global`` / ``tpe-stage`` /
``tpe-block`` (TPE from the ReLU baseline); ``grid-block`` (the grid, then per-block TPE warm-started
+-0.15 around its best); ``trained-block`` / ``trained-channel`` (CT's parameters trained by gradient on the
train split, best val epoch kept; on the robust task they train on clean accuracy: an attack is not
trainable here); ``trained-block-search`` (the trained block profile, then per-block TPE warm-started
+-0.15 around its betas, c = 0.5). For seed s every method sees the split of seed s and samples with seed s;
it selects on val only, and its choice is scored once on test.

Per method and metric: the test value, the paired difference to ReLU on the same test samples (a paired
bootstrap interval and McNemar's p per seed), and over seeds the mean gain with a 95% t-interval, the seeds
where it is positive and the verdict (``ct_tune.evidence.over_seeds``, the summary ``ct-tune pipeline run
--seeds`` prints too); the val evaluations (trials, or epochs + 1) and seconds spent. Runs in this process on
in-memory Optuna studies (no MLflow: this measures the search, not the bookkeeping).
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
from ct_tune.bench import Bench
from ct_tune.evidence import compare, over_seeds
from ct_tune.models import ACTIVATIONS
from ct_tune.objectives import make_objective
from ct_tune.pipelines import map_profile, warm_start_ranges
from ct_tune.search import paper_grid, spec_from_dict
from ct_tune.search._samplers import build_sampler
from ct_tune.search._space import param_names, profile_params, suggest
from ct_tune.steering import family_named
from ct_tune.trained import train_ct

import optuna
import torch
from _common import pretrained_checkpoint, pretrained_digits_checkpoint

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
NETWORK_LABELS = {"relu": "ReLU", "silu": "SiLU", "gelu": "GELU"}
WIDTH = 0.15  # warm-start ranges: +- this around the earlier best


@dataclass(frozen=True)
class Budget:
    grid: list[float]
    trials: int  # TPE trials; the warm-started searches get trials - len(grid) after their first stage
    epochs: int
    lr_step: int | None
    pgd_n: int  # val samples attacked in every robust trial
    pgd_steps: int
    pgd_test_n: int  # test samples attacked once per chosen profile
    autoattack_n: int  # test samples of the AutoAttack check (a seeded, stratified draw, the same for every profile)


FULL = Budget(paper_grid(), trials=93, epochs=8, lr_step=5, pgd_n=1000, pgd_steps=10, pgd_test_n=1000, autoattack_n=100)
# The robust task runs 28x28 images and attacks every val evaluation (PGD-10 on 150 samples: about 7 s on one
# core here, against 0.9 s for a digits -> mnist5k probe), so its full budget is smaller: every third grid point,
# 20 TPE trials, 4 training epochs.
ROBUST = Budget(
    paper_grid()[::3], trials=20, epochs=4, lr_step=3, pgd_n=150, pgd_steps=10, pgd_test_n=500, autoattack_n=100
)
QUICK = Budget(
    paper_grid()[::5], trials=12, epochs=2, lr_step=None, pgd_n=100, pgd_steps=5, pgd_test_n=100, autoattack_n=20
)


def budget_for(task: str, quick: bool) -> Budget:
    return QUICK if quick else ROBUST if task == "mnist5k-robust" else FULL


def describe(budget: Budget, task: str) -> str:
    text = f"grid {len(budget.grid) + 1} trials, TPE {budget.trials} trials, trained {budget.epochs} epochs"
    if task == "mnist5k-robust":
        text += (
            f", PGD-{budget.pgd_steps} on {budget.pgd_n} val / {budget.pgd_test_n} test samples, "
            f"AutoAttack on {budget.autoattack_n} test samples"
        )
    return text


def pgd_objective(budget: Budget, n: int | None = None) -> dict[str, Any]:
    n = budget.pgd_n if n is None else n
    return {"name": "adversarial", "attack": "pgd", "eps": 8 / 255, "steps": budget.pgd_steps, "n": n}


def adversarial_objective(pgd: dict[str, Any], **changes: Any):
    """The PGD objective with ``changes`` (``attack="autoattack"``: the standard version, the original's
    settings), validated as ``objectives: [{name: adversarial, ...}]`` is in a spec."""
    settings = {**pgd, **changes}
    settings.pop("name")
    return make_objective("adversarial", **settings)


@dataclass
class Candidate:
    """A profile as it was scored on val: its values at a granularity (the family's c unless trained)."""

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

    def __init__(self, task: str, seed: int, budget: Budget, root: Path, activation: str = "relu") -> None:
        self.task, self.seed, self.budget = task, seed, budget
        robust = task == "mnist5k-robust"
        if task == "digits-mnist5k":
            checkpoint = (
                pretrained_digits_checkpoint(root)
                if activation == "relu"
                else pretrained_checkpoint(root, "digits", activation=activation)
            )
            data = {"name": "mnist5k", "train_size": 2000}
        elif task == "mnist5k-digits":
            checkpoint, data = pretrained_checkpoint(root, "mnist5k"), {"name": "digits"}
        else:
            checkpoint, data = pretrained_checkpoint(root, "mnist5k", seed=seed), {"name": "mnist5k"}
        self.model = {"checkpoint": str(checkpoint)}
        self.data = {**data, "seed": seed}
        self.run = {"device": "cpu", "batch_size": 512}
        self.pgd = pgd_objective(budget)
        self.objectives = [self.pgd] if robust else [{"name": "probe"}]  # val; test adds clean accuracy
        self.select = "adversarial" if robust else "probe"  # what val selection maximises
        self.train_objective = "accuracy" if robust else "probe"
        self.metrics = {"pgd": "adversarial", "clean": "accuracy"} if robust else {"probe": "probe"}
        self.benches: dict[str, Bench] = {}
        self.evaluations = 0
        self.outcomes: dict[str, Outcome] = {}
        self._histories: dict[str, list[Candidate]] = {}  # a first stage's val history, for the stage after it
        self._autoattacked: dict[str, Any] = {}  # a profile's AutoAttack result, by its values

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
            spec = self.spec(granularity)
            self.benches[granularity] = Bench.open(spec, **spec.grouping, device="cpu")
        return self.benches[granularity]

    @property
    def family(self) -> str:
        """The network's activation family (one for the whole small ResNet): ``relu``, ``silu`` or ``gelu``."""
        (family,) = set(self.bench("global").handle.families.values())
        return family

    def _apply(self, candidate: Candidate) -> Bench:
        bench = self.bench(candidate.granularity)
        assert bench.handle is not None
        if candidate.trained:
            bench.handle.update(candidate.values)
        else:  # the family's c: 0.5 for ReLU (the paper's), 1 for SiLU and GELU (beta0 is their own function)
            bench.handle.update(candidate.values, c=family_named(self.family).default_c)
        return bench

    def val(self, granularity: str, betas: dict[str, float]) -> Candidate:
        candidate = Candidate(0.0, betas, granularity)
        self.evaluations += 1
        candidate.val = self._apply(candidate).evaluator("val").evaluate()[self.select].value
        return candidate

    def test(self, candidate: Candidate) -> dict[str, Any]:
        bench = self._apply(candidate)
        if self.select == "adversarial":
            objectives = [make_objective("accuracy"), adversarial_objective(self.pgd, n=self.budget.pgd_test_n)]
            results = bench.evaluator("test", objectives).evaluate()
        else:
            results = bench.evaluator("test").evaluate()
        return {metric: results[name] for metric, name in self.metrics.items()}

    @staticmethod
    def autoattack_key(candidate: Candidate) -> str:
        """The same profile gives the same key (a trained profile: the same candidate)."""
        return str(id(candidate)) if candidate.trained else repr(sorted(candidate.values.items()))

    def autoattack(self, candidate: Candidate) -> dict[str, Any]:
        """Standard AutoAttack, and PGD, on ``autoattack_n`` test samples (the same ones for every profile):
        a PGD gain that AutoAttack does not confirm on the same samples is gradient masking."""
        key = self.autoattack_key(candidate)
        if key not in self._autoattacked:
            bench, n = self._apply(candidate), self.budget.autoattack_n
            pgd = adversarial_objective(self.pgd, n=n)
            autoattack = adversarial_objective(self.pgd, attack="autoattack", n=n)
            self._autoattacked[key] = {
                "pgd@aa": bench.evaluator("test", [pgd]).evaluate()["adversarial"],
                "autoattack": bench.evaluator("test", [autoattack]).evaluate()["adversarial"],
            }
        return self._autoattacked[key]

    # -- the methods; each returns its val history (a trained profile is one entry) -------------------------
    def grid(self) -> list[Candidate]:
        """The network's own activation, then the budget's points of the paper grid (around beta0 for SiLU
        and GELU: ``paper_grid(family)``, the same steps as ReLU's)."""
        relu, own = paper_grid(), paper_grid(self.family)
        points = [own[relu.index(beta)] for beta in self.budget.grid]
        return [self.val("global", {"global": beta}) for beta in [family_named(self.family).baseline, *points]]

    def tpe(self, granularity: str, trials: int, warm: dict[str, float] | None = None) -> list[Candidate]:
        bench = self.bench(granularity)
        units, families = bench.units, bench.handle.families
        if warm is None:  # from the network's own activation (beta = 1 for ReLU, beta0 for SiLU and GELU)
            spec, enqueued = self.spec(granularity), bench.handle.baselines
        else:
            own = self.spec(granularity).search
            bounds = {unit: (r.low, r.high) for unit in units for r in [own.range_of(unit, families[unit])]}
            ranges = warm_start_ranges([warm], WIDTH, 0.7, 1.0, bounds=bounds if self.family != "relu" else None)
            spec, enqueued = self.spec(granularity, ranges), warm
        sampler = build_sampler(spec, param_names(spec, units), families=families)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        study.enqueue_trial(profile_params(spec, enqueued, None, families))
        history: list[Candidate] = []

        def objective(trial: optuna.Trial) -> float:
            betas, _ = suggest(trial, spec, units, families)
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
        if method == "relu":  # the network's own activation: beta = 1 for ReLU, beta0 (c = 1) for SiLU and GELU
            history = [self.val("global", self.bench("global").handle.baselines)]
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


def run_task(
    task: str,
    seeds: list[int],
    methods: list[str],
    budget: Budget,
    root: Path,
    autoattack: bool,
    activation: str = "relu",
) -> dict:
    """Every method on every seed; per seed the test results and the paired comparison with the network's own
    activation (``relu``)."""
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for seed in seeds:
        state = Seed(task, seed, budget, root, activation)
        try:
            for granularity in _granularities(methods):  # loaded before any method's clock starts
                state.bench(granularity)
            baseline = state.run_method("relu")
            baseline.test = state.test(baseline.chosen)
            for method in methods:
                outcome = state.run_method(method)
                if not outcome.test:
                    outcome.test = state.test(outcome.chosen)
                print(
                    f"  {task} seed {seed} {label(method, activation)}: val {outcome.chosen.val:.4f}, "
                    + ", ".join(f"test {m} {r.value:.4f}" for m, r in outcome.test.items())
                    + f" ({outcome.evaluations} evals, {outcome.seconds:.0f} s)",
                    flush=True,
                )
            if autoattack and "pgd" in baseline.test:
                check_with_autoattack(state, [m for m in methods if m != "relu"])
            for method in methods:
                outcome = state.outcomes[method]
                record: dict[str, Any] = {
                    "seed": seed,
                    "val": outcome.chosen.val,
                    "evaluations": outcome.evaluations,
                    "seconds": outcome.seconds,
                }
                record.update(_scored(outcome.test, baseline.test, list(outcome.test)))
                if not outcome.chosen.trained:
                    record["profile"] = {u: round(float(b), 4) for u, b in outcome.chosen.values.items()}
                rows[method].append(record)
        finally:
            state.close()
    return rows


def check_with_autoattack(state: Seed, methods: list[str]) -> None:
    """AutoAttack the profile with the largest PGD test gain over ReLU (if any gained), and ReLU, on the same
    samples; a method that chose the very same profile shares the result. One profile per seed: an AutoAttack
    call costs minutes here, and the largest gain is the claim most in need of a check."""
    baseline = state.outcomes["relu"]
    gains = {m: state.outcomes[m].test["pgd"].value - baseline.test["pgd"].value for m in methods}
    best = max(gains, key=lambda m: gains[m], default=None)
    if best is None or gains[best] <= 0:
        print(f"  {state.task} seed {state.seed}: no PGD gain over ReLU, so no AutoAttack check", flush=True)
        return
    checked = state.autoattack(state.outcomes[best].chosen)
    baseline.test.update(state.autoattack(baseline.chosen))
    for method in methods:
        outcome = state.outcomes[method]
        if state.autoattack_key(outcome.chosen) in state._autoattacked:
            outcome.test.update(state._autoattacked[state.autoattack_key(outcome.chosen)])
    print(
        f"  {state.task} seed {state.seed} AutoAttack check of {best} (PGD gain {100 * gains[best]:+.1f} points): "
        f"on {state.budget.autoattack_n} test samples, PGD {checked['pgd@aa'].value:.3f} vs ReLU "
        f"{baseline.test['pgd@aa'].value:.3f}, AutoAttack {checked['autoattack'].value:.3f} vs ReLU "
        f"{baseline.test['autoattack'].value:.3f}",
        flush=True,
    )


def _scored(test: dict[str, Any], baseline: dict[str, Any], metrics: list[str]) -> dict[str, Any]:
    """Each metric's test value and its paired comparison with ReLU's on the same samples."""
    scored = {}
    for metric in metrics:
        comparison = compare(a=test[metric].correct.cpu().numpy(), b=baseline[metric].correct.cpu().numpy())
        scored[metric] = {"test": test[metric].value, "vs_relu": comparison.to_dict()}
    return scored


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


def _metrics(rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The scored metrics, in the order they first appear."""
    seen: dict[str, None] = {}
    for records in rows.values():
        for record in records:
            seen.update((k, None) for k, v in record.items() if isinstance(v, dict) and "vs_relu" in v)
    return list(seen)


def summarise(rows: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for method, records in rows.items():
        entry: dict[str, Any] = {
            "seeds": len(records),
            "evaluations": statistics.mean(r["evaluations"] for r in records),
            "seconds": statistics.mean(r["seconds"] for r in records),
        }
        for metric in _metrics(rows):
            scored = [r[metric] for r in records if metric in r]  # AutoAttack: only where PGD showed a gain
            if not scored:
                continue
            gains = over_seeds(
                seeds=[r["seed"] for r in records if metric in r], gains=[m["vs_relu"]["diff"] for m in scored]
            )
            entry[metric] = {
                "seeds": len(scored),
                "test": statistics.mean(m["test"] for m in scored),
                "gain": gains.mean,
                "t_low": math.nan if gains.low is None else gains.low,
                "t_high": math.nan if gains.high is None else gains.high,
                "paired_low": statistics.mean(m["vs_relu"]["ci_low"] for m in scored),
                "paired_high": statistics.mean(m["vs_relu"]["ci_high"] for m in scored),
                "positive": gains.positive,
                "within_noise": gains.within_noise,
                "verdict": gains.verdict,
            }
        summary[method] = entry
    return summary


def label(method: str, activation: str) -> str:
    """What tables print for ``method``: the ``relu`` baseline of a SiLU or GELU network is its own activation."""
    return "own activation" if method == "relu" and activation != "relu" else method


def print_table(task: str, summary: dict[str, dict[str, Any]], activation: str = "relu") -> None:
    """One table per metric; AutoAttack's only lists the profiles it checked (those with a PGD gain)."""
    metrics = list(dict.fromkeys(k for entry in summary.values() for k, v in entry.items() if isinstance(v, dict)))
    seeds = max(entry["seeds"] for entry in summary.values())
    network = "" if activation == "relu" else f" ({NETWORK_LABELS[activation]} network)"
    baseline = "ReLU's" if activation == "relu" else "the own activation's"
    print(f"\n{task}{network}, {seeds} seed(s); gain = test minus {baseline} on the same samples, in points (x100)")
    for metric in metrics:
        print(f"\n{metric}")
        print(
            f"{'method':<22} {'seeds':>5} {'evals':>6} {'seconds':>8} {'test':>7} {'gain':>6} "
            f"{'95% t over seeds':>17} {'mean paired 95%':>16}  verdict"
        )
        for method, entry in summary.items():
            if metric not in entry:
                continue
            m = entry[metric]
            t_text = "n/a" if math.isnan(m["t_low"]) else f"[{100 * m['t_low']:+.2f}, {100 * m['t_high']:+.2f}]"
            paired = f"[{100 * m['paired_low']:+.2f}, {100 * m['paired_high']:+.2f}]"
            name = label(method, activation)
            print(
                f"{name:<22} {m['seeds']:>5} {entry['evaluations']:>6.0f} {entry['seconds']:>8.0f} "
                f"{m['test']:>7.4f} {100 * m['gain']:>+6.2f} {t_text:>17} {paired:>16}  "
                + ("" if method == "relu" else f"{m['verdict']} ({m['positive']}/{m['seeds']} seeds positive)")
            )
    print(
        "\n(95% t: a t-interval of the per-seed paired gains over seeds; mean paired 95%: the mean over seeds of the "
        "per-seed paired bootstrap intervals on test samples; pgd@aa: PGD on the AutoAttack samples)"
    )


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = list(range(int(text))) if "," not in text else [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a count nor a list like 3,4") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: give a count >= 1 or distinct seeds >= 0")
    return seeds


def merge(paths: list[str]) -> None:
    """One summary per task over the per-seed rows of several runs (each seed once)."""
    tasks: dict[str, dict[str, list[dict[str, Any]]]] = {}
    activation = "relu"
    for path in paths:
        run = json.loads(Path(path).read_text())
        activation = run.get("activation", "relu")  # the runs merged are of one network
        for task, result in run["tasks"].items():
            rows = tasks.setdefault(task, {})
            for method, records in result["rows"].items():
                known = {r["seed"] for r in rows.get(method, [])}
                twice = [r["seed"] for r in records if r["seed"] in known]
                if twice:
                    sys.exit(f"{path}: {task} {method} seed {twice[0]} is in an earlier file too; merge each seed once")
                rows.setdefault(method, []).extend(records)
    for task, rows in tasks.items():
        print_table(task, summarise(rows), activation)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", action="append", choices=TASKS, help="repeatable (default: all three)")
    parser.add_argument(
        "--seeds", type=parse_seeds, help="N (seeds 0..N-1) or a list like 3,4 (default 5; 2 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny budgets to check the script (minutes)")
    parser.add_argument("--methods", help=f"comma-separated subset of: {','.join(METHODS)}")
    parser.add_argument("--json", help="write every per-seed result and the summaries here")
    parser.add_argument("--no-autoattack", action="store_true", help="robust task: skip the AutoAttack check")
    parser.add_argument("--root", help="where pretrained checkpoints are kept (default: a temporary folder)")
    parser.add_argument(
        "--activation",
        choices=ACTIVATIONS,
        default="relu",
        help="the network's activation (default: relu); silu and gelu run digits-mnist5k only",
    )
    parser.add_argument(
        "--merge", nargs="+", metavar="JSON", help="summarise the --json files of earlier runs (say, seeds run apart)"
    )
    args = parser.parse_args()
    if args.merge:
        merge(args.merge)
        return
    methods = args.methods.split(",") if args.methods else METHODS
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    methods = [m for m in METHODS if m in methods and m != "relu"]
    tasks = args.task or (TASKS if args.activation == "relu" else ["digits-mnist5k"])
    if args.activation != "relu" and tasks != ["digits-mnist5k"]:
        parser.error(f"--activation {args.activation} runs --task digits-mnist5k only")
    seeds = args.seeds or list(range(2 if args.quick else 5))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), python {platform.python_version()}"
    )
    print(f"command: python benchmarks/search_quality.py {' '.join(sys.argv[1:])}")
    print(f"seeds {', '.join(map(str, seeds))}", flush=True)
    results: dict[str, Any] = {"argv": sys.argv[1:], "activation": args.activation, "tasks": {}}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.root) if args.root else Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        for task in tasks:
            budget = budget_for(task, args.quick)
            print(f"\n{task}: {describe(budget, task)}", flush=True)
            task_started = time.perf_counter()
            rows = run_task(task, seeds, ["relu", *methods], budget, root, not args.no_autoattack, args.activation)
            summary = summarise(rows)
            print_table(task, summary, args.activation)
            seconds = time.perf_counter() - task_started
            print(f"{task}: {seconds:.0f} s ({seconds / 3600:.2f} h)", flush=True)
            results["tasks"][task] = {"budget": budget.__dict__, "rows": rows, "summary": summary, "seconds": seconds}
    results["seconds"] = time.perf_counter() - started
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    print(f"\nwall time: {results['seconds']:.0f} s ({results['seconds'] / 3600:.2f} h)")


if __name__ == "__main__":
    main()
