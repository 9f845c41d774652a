"""The chunked Wilcoxon pruner: Optuna's WilcoxonPruner rule with the normal approximation, on real studies."""

from __future__ import annotations

import warnings

from ct_tune.search._wilcoxon import ChunkWilcoxonPruner

import numpy as np
import optuna
import pytest


def _study(best: list[float], direction: str = "maximize") -> optuna.Study:
    """A study whose one complete trial reported ``best`` at steps 25, 50, ..."""
    study = optuna.create_study(direction=direction, storage=optuna.storages.InMemoryStorage())
    trial = study.ask()
    for index, value in enumerate(best):
        trial.report(value, 25 * (index + 1))
    study.tell(trial, float(np.mean(best)))
    return study


def _decide(pruner: optuna.pruners.BasePruner, study: optuna.Study, values: list[float]) -> bool:
    trial = study.ask()
    for index, value in enumerate(values):
        trial.report(value, 25 * (index + 1))
    frozen = study._storage.get_trial(trial._trial_id)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return pruner.prune(study, frozen)


@pytest.mark.parametrize("seed", range(6))
def test_it_decides_as_optunas_pruner_where_the_test_is_clear(seed) -> None:
    """Chunk accuracies (multiples of 1/25, ties and zero differences included): where Optuna's exact or
    permutation p-value is far from the threshold, the approximation decides the same."""
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(seed)
    best = list(rng.binomial(25, 0.6, 20) / 25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optunas = optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2)
    ours = ChunkWilcoxonPruner(p_threshold=0.1, n_startup_steps=2)
    compared = 0
    for shift in (-0.15, -0.08, -0.03, 0.0, 0.05):
        values = list(np.clip(rng.binomial(25, 0.6 + shift, 20) / 25, 0, 1))
        diff = np.array(values) - np.array(best)
        if diff.any():
            p = wilcoxon(diff, alternative="less", zero_method="zsplit").pvalue
            if 0.03 < p < 0.3:  # near the threshold the two p-values may fall on either side
                continue
        study = _study(best)
        assert _decide(ours, study, values) == _decide(optunas, study, values), (shift, values)
        compared += 1
    assert compared >= 3


def test_a_clearly_worse_trial_is_pruned_and_an_equal_or_better_one_is_not() -> None:
    best = [0.6, 0.64, 0.56, 0.6, 0.68, 0.6, 0.52, 0.64, 0.6, 0.6, 0.56, 0.64]
    pruner = ChunkWilcoxonPruner(p_threshold=0.1, n_startup_steps=2)
    assert _decide(pruner, _study(best), [v - 0.12 for v in best])
    assert not _decide(pruner, _study(best), best)
    assert not _decide(pruner, _study(best), [v + 0.04 for v in best])
    assert not _decide(pruner, _study(best), [0.2])  # one pair: nothing is tested
    minimise = _study(best, direction="minimize")
    assert _decide(pruner, minimise, [v + 0.12 for v in best]) and not _decide(pruner, minimise, best)


def test_startup_steps_hold_the_test_back() -> None:
    best = [0.6] * 12
    worse = [0.3] * 12
    assert _decide(ChunkWilcoxonPruner(n_startup_steps=5), _study(best), worse)
    assert not _decide(ChunkWilcoxonPruner(n_startup_steps=5), _study(best), worse[:4])
    assert not _decide(ChunkWilcoxonPruner(), optuna.create_study(direction="maximize"), worse)  # no best yet
