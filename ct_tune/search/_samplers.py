"""Optuna samplers and pruners built from a study spec, every argument pinned explicitly.

Optuna 5 changed defaults (TPE is multivariate with ``constant_liar=True``; multi-objective studies
default to TPE), so nothing here relies on a default: the spec holds each value and the sampler gets
it. No two trials share a random stream: each trial is sampled by a sampler seeded with
``trial_seed(seed, trial number)``. Trial numbers are unique in a study (the database hands them out),
so parallel workers, resumed launches and launchers on other machines never replay each other's draws,
and a study run again from its seed draws the same betas for the same trial numbers. Optuna's samplers
keep their state in the storage, not in the sampler object, so a fresh one per trial loses nothing.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ct_tune._errors import InputError
from ct_tune.search._spec import StudySpec

if TYPE_CHECKING:
    import optuna

MAX_GRID_POINTS = 100_000


def trial_seed(study_seed: int, trial_number: int) -> int:
    """The sampler seed of one trial: a hash of the study's seed and the trial's number (32 bits, numpy's range)."""
    digest = hashlib.sha256(f"ct-tune:{study_seed}:{trial_number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def build_sampler(
    spec: StudySpec,
    param_names: list[str],
    *,
    seed: int | None = None,
    families: Mapping[str, str] | None = None,
) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded with ``seed`` (default: the spec's own seed); ``families`` (unit -> family,
    ReLU where absent) gives the grid sampler each unit's own beta grid."""
    import optuna

    options = spec.sampler
    seed = options.seed if seed is None else seed
    name = options.name
    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=options.n_startup_trials,
            n_ei_candidates=options.n_ei_candidates,
            constant_liar=options.constant_liar,
            group=options.group,
        )
    if name == "gp":
        return optuna.samplers.GPSampler(
            seed=seed,
            n_startup_trials=options.n_startup_trials,
            deterministic_objective=options.deterministic_objective,
        )
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise InputError("the cmaes sampler needs the cmaes package: pip install cmaes") from None
        return optuna.samplers.CmaEsSampler(
            seed=seed,
            n_startup_trials=options.n_startup_trials,
            sigma0=options.sigma0,
            popsize=options.popsize,
            use_separable_cma=options.use_separable_cma,
            with_margin=options.with_margin,
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        families = families or {}
        grid = {param: spec.grid_values(families.get(param.removeprefix("beta."), "relu")) for param in param_names}
        values = grid[param_names[0]]
        points = math.prod(len(each) for each in grid.values())
        if points > MAX_GRID_POINTS:
            raise InputError(
                f"the grid has {len(values)}^{len(param_names)} = {points:.3g} points; use granularity global, "
                "a coarser search.beta.step, or another sampler"
            )
        return optuna.samplers.GridSampler(grid, seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(
            seed=seed,
            population_size=options.population_size,
            crossover_prob=options.crossover_prob,
            swapping_prob=options.swapping_prob,
            mutation_prob=options.mutation_prob,
        )
    raise AssertionError(f"unhandled sampler {name}")  # the spec's Literal lists every name


def build_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    import optuna

    options = spec.pruner
    name = options.name
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=options.n_startup_trials,
            n_warmup_steps=options.n_warmup_steps,
            interval_steps=options.interval_steps,
        )
    if name == "percentile":
        return optuna.pruners.PercentilePruner(
            options.percentile,
            n_startup_trials=options.n_startup_trials,
            n_warmup_steps=options.n_warmup_steps,
            interval_steps=options.interval_steps,
        )
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=options.min_resource, max_resource="auto", reduction_factor=options.reduction_factor
        )
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=options.min_resource,
            reduction_factor=options.reduction_factor,
            min_early_stopping_rate=options.min_early_stopping_rate,
        )
    if name == "wilcoxon":  # Optuna's rule; its scipy call runs a permutation test per report (see the module)
        from ct_tune.search._wilcoxon import ChunkWilcoxonPruner

        return ChunkWilcoxonPruner(p_threshold=options.p_threshold, n_startup_steps=options.n_startup_steps)
    raise AssertionError(f"unhandled pruner {name}")
