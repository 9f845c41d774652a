"""Repeated draws in the shipped pipelines: how many trials of one study re-test a profile the study already
drew, with the old seeding (each worker's sampler seeded ``seed + worker`` at every launch) and with ours
(each trial's sampler seeded ``trial_seed(seed, trial number)``).

Every stage of every file in ``pipelines/`` is run through Optuna with its own sampler, search space and
budget, on a stand-in objective (a smooth function of the betas: the draws, not the scores, are counted),
as two workers sharing one storage, in three launches (the budget in thirds: a resume after Ctrl-C, or
``--n-trials`` in steps). Enqueued trials (baseline, paper grid, warm start) are not counted. Several
sampler seeds give a mean and a range.

    python benchmarks/duplicate_draws.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from pathlib import Path

from ct_tune.models import create_model
from ct_tune.pipelines import load_pipeline
from ct_tune.pipelines._spec import stage_spec
from ct_tune.search._samplers import build_sampler, trial_seed
from ct_tune.search._space import param_names, suggest
from ct_tune.steering import units

import optuna
import torch

ROOT = Path(__file__).resolve().parents[1]
WORKERS = 2
LAUNCHES = 3


def stage_units(model: dict, granularity: str) -> list[str]:
    """The units of a pipeline's model at a granularity (built without weights: only its structure counts)."""
    name = model.get("name") or Path(model["checkpoint"]).name.split("-")[0]  # checkpoints/<arch>-<data>-...
    loaded = create_model(name, num_classes=10, input_size=model.get("input_size"))
    side = loaded.input_spec.size or 32
    return units(loaded.net, torch.zeros(1, loaded.input_spec.channels, side, side), granularity)


def stand_in(betas: dict[str, float], objectives: int) -> float | list[float]:
    score = -sum((beta - 0.85) ** 2 for beta in betas.values())
    return score if objectives == 1 else [score, -score / 2 + sum(betas.values()) * 0.01]


def run_stage(spec, units: list[str], *, per_trial: bool) -> int:
    """Drawn trials that repeat an earlier draw of the same study."""
    names = param_names(spec, units)
    directions = ["maximize"] * len(spec.objectives)
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, directions=directions)
    total = spec.budget.n_trials or 30
    steps = [total * (launch + 1) // LAUNCHES for launch in range(LAUNCHES)]
    for target in steps:
        workers = [
            optuna.load_study(
                study_name=study.study_name,
                storage=storage,
                sampler=build_sampler(spec, names, seed=spec.sampler.seed + worker),
            )
            for worker in range(WORKERS)
        ]
        turn = 0
        while len(study.trials) < target:  # the workers take turns, as two processes roughly do
            worker = workers[turn % WORKERS]
            turn += 1
            trial = worker.ask()
            if per_trial:
                worker.sampler = build_sampler(spec, names, seed=trial_seed(spec.sampler.seed, trial.number))
            betas, _ = suggest(trial, spec, units)
            worker.tell(trial, stand_in(betas, len(spec.objectives)))
    drawn = [tuple(sorted(t.params.items())) for t in study.trials]
    return len(drawn) - len(set(drawn))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="sampler seeds per stage (default 3)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")
    print(f"{WORKERS} workers, {LAUNCHES} launches per stage, {args.seeds} seeds; repeated draws per study")
    print(f"{'pipeline stage':<48} {'trials':>6} {'before':>14} {'now':>10}")
    before_total, now_total = [], []
    for path in sorted((ROOT / "pipelines").glob("*.yaml")):
        pipeline = load_pipeline(path)
        model = dict(pipeline.base.get("model", {}))
        for stage in pipeline.stages:
            before, now = [], []
            for seed in range(args.seeds):
                spec = stage_spec(pipeline, stage.name)
                spec = spec.model_copy(update={"sampler": spec.sampler.model_copy(update={"seed": seed})})
                names = stage_units(model, spec.search.granularity)
                before.append(run_stage(spec, names, per_trial=False))
                now.append(run_stage(spec, names, per_trial=True))
            before_total.append(sum(before))
            now_total.append(sum(now))
            label = f"{path.stem} {stage.name} ({spec.sampler.name})"
            print(
                f"{label:<48} {spec.budget.n_trials or 30:>6} "
                f"{statistics.mean(before):>6.1f} [{min(before)}-{max(before)}] "
                f"{statistics.mean(now):>4.1f} [{min(now)}-{max(now)}]"
            )
    print(f"all stages, summed over seeds: before {sum(before_total)}, now {sum(now_total)}")


if __name__ == "__main__":
    main()
