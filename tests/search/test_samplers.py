"""Samplers and pruners built from a spec with every argument it holds; a grid too large refused."""

from __future__ import annotations

from ct_tune import InputError
from ct_tune.search import spec_from_dict
from ct_tune.search._samplers import MAX_GRID_POINTS, build_pruner, build_sampler, trial_seed

import optuna
import pytest

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def spec(sampler=None, pruner=None, **search):
    data = {"model": {"checkpoint": "c.pt"}, "search": search}
    if sampler is not None:
        data["sampler"] = sampler
    if pruner is not None:
        data["pruner"] = pruner
    return spec_from_dict(data)


def draws(sampler: optuna.samplers.BaseSampler, n: int = 3) -> list[float]:
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda trial: trial.suggest_float("beta.stem", 0.7, 1.0), n_trials=n)
    return [trial.params["beta.stem"] for trial in study.trials]


def test_tpe_gets_every_argument():
    sampler = build_sampler(
        spec(
            {
                "name": "tpe",
                "seed": 3,
                "n_startup_trials": 4,
                "n_ei_candidates": 7,
                "constant_liar": False,
                "group": True,
            }
        ),
        ["beta.a"],
    )
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert (sampler._n_startup_trials, sampler._n_ei_candidates, sampler._constant_liar, sampler._group) == (
        4,
        7,
        False,
        True,
    )
    default = build_sampler(spec(), ["beta.a"])
    assert (default._n_startup_trials, default._n_ei_candidates, default._constant_liar) == (10, 24, True)


def test_gp_cmaes_random_nsga2_get_every_argument():
    gp = build_sampler(spec({"name": "gp", "n_startup_trials": 2, "deterministic_objective": False}), ["beta.a"])
    assert isinstance(gp, optuna.samplers.GPSampler) and gp._n_startup_trials == 2 and not gp._deterministic
    cma = build_sampler(
        spec({"name": "cmaes", "n_startup_trials": 3, "sigma0": 0.05, "popsize": 6, "with_margin": True}), ["beta.a"]
    )
    assert isinstance(cma, optuna.samplers.CmaEsSampler)
    assert (cma._n_startup_trials, cma._sigma0, cma._popsize, cma._with_margin, cma._use_separable_cma) == (
        3,
        0.05,
        6,
        True,
        False,
    )
    assert isinstance(build_sampler(spec("random"), ["beta.a"]), optuna.samplers.RandomSampler)
    nsga = build_sampler(
        spec(
            {"name": "nsga2", "population_size": 8, "crossover_prob": 0.7, "swapping_prob": 0.3, "mutation_prob": 0.1}
        ),
        ["beta.a"],
    )
    assert isinstance(nsga, optuna.samplers.NSGAIISampler) and nsga._population_size == 8
    children = nsga._child_generation_strategy
    assert (children._crossover_prob, children._swapping_prob, children._mutation_prob) == (0.7, 0.3, 0.1)


def test_the_seed_is_the_specs_unless_given():
    options = spec({"name": "random", "seed": 5})
    first = draws(build_sampler(options, ["beta.stem"]))
    assert draws(build_sampler(options, ["beta.stem"])) == first == draws(optuna.samplers.RandomSampler(seed=5))
    assert draws(build_sampler(options, ["beta.stem"], seed=6)) == draws(optuna.samplers.RandomSampler(seed=6))


def test_trial_seeds_are_fixed_by_the_study_seed_and_differ_between_trials():
    seeds = [trial_seed(5, number) for number in range(10_000)]
    assert len(set(seeds)) == len(seeds) and all(0 <= seed < 2**32 for seed in seeds)
    assert trial_seed(5, 3) == trial_seed(5, 3) != trial_seed(6, 3)


def test_grid_covers_the_beta_grid():
    grid = build_sampler(spec("grid", beta={"low": 0.8, "high": 1.0, "step": 0.1}), ["beta.a", "beta.b"])
    assert isinstance(grid, optuna.samplers.GridSampler)
    assert grid._search_space == {"beta.a": [0.8, 0.9, 1.0], "beta.b": [0.8, 0.9, 1.0]}
    study = optuna.create_study(sampler=grid)
    study.optimize(
        lambda t: t.suggest_float("beta.a", 0.8, 1.0, step=0.1) + t.suggest_float("beta.b", 0.8, 1.0, step=0.1),
        n_trials=20,  # the grid stops the study once every point is done
    )
    points = {(round(t.params["beta.a"], 6), round(t.params["beta.b"], 6)) for t in study.trials}
    assert len(study.trials) == 9 and len(points) == 9
    paper = build_sampler(spec("grid"), ["beta.global"])  # no step: the paper's 0.01 grid inside 0.70-1.00
    assert paper._search_space["beta.global"] == [round(0.7 + 0.01 * i, 10) for i in range(31)]


def test_a_grid_too_large_is_refused():
    names = [f"beta.u{i}" for i in range(4)]  # 31^4 = 923,521 points
    assert MAX_GRID_POINTS < 31**4
    assert isinstance(build_sampler(spec("grid"), names[:3]), optuna.samplers.GridSampler)  # 29,791: fine
    with pytest.raises(InputError) as error:
        build_sampler(spec("grid"), names)
    assert "the grid has 31^4 = 9.24e+05 points; use granularity global" in str(error.value)
    with pytest.raises(InputError, match=r"the grid sampler needs search\.beta\.step"):
        build_sampler(spec("grid", beta={"low": 0.705, "high": 1.0}), ["beta.a"])


def test_pruners_get_every_argument():
    assert isinstance(build_pruner(spec()), optuna.pruners.NopPruner)
    median = build_pruner(
        spec(pruner={"name": "median", "n_startup_trials": 2, "n_warmup_steps": 100, "interval_steps": 50})
    )
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert (median._percentile, median._n_startup_trials, median._n_warmup_steps, median._interval_steps) == (
        50.0,
        2,
        100,
        50,
    )
    percentile = build_pruner(
        spec(
            pruner={
                "name": "percentile",
                "percentile": 10,
                "n_startup_trials": 1,
                "n_warmup_steps": 3,
                "interval_steps": 2,
            }
        )
    )
    assert (percentile._percentile, percentile._n_startup_trials, percentile._n_warmup_steps) == (10.0, 1, 3)
    assert percentile._interval_steps == 2
    hyperband = build_pruner(spec(pruner={"name": "hyperband", "min_resource": 32, "reduction_factor": 2}))
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner)
    assert (hyperband._min_resource, hyperband._max_resource, hyperband._reduction_factor) == (32, "auto", 2)
    halving = build_pruner(
        spec(
            pruner={
                "name": "successive_halving",
                "min_resource": 16,
                "reduction_factor": 3,
                "min_early_stopping_rate": 1,
            }
        )
    )
    assert isinstance(halving, optuna.pruners.SuccessiveHalvingPruner)
    assert (halving._min_resource, halving._reduction_factor, halving._min_early_stopping_rate) == (16, 3, 1)
    auto = build_pruner(spec(pruner={"name": "successive_halving"}))
    assert auto._min_resource is None and auto._reduction_factor == 4  # Optuna's "auto": decided from the trials
