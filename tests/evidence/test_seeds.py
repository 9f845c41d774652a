"""The summary over seeds that replicates and the search-quality benchmark share."""

from __future__ import annotations

import math

from ct_tune.evidence import over_seeds

import pytest


def test_t_interval_over_seeds_is_students() -> None:
    summary = over_seeds(seeds=[0, 1], gains=[0.01, 0.03])
    half = 12.7062 * math.sqrt(2e-4) / math.sqrt(2)  # t(0.975, 1 dof) * sd / sqrt(n)
    assert summary.mean == pytest.approx(0.02)
    assert (summary.low, summary.high) == pytest.approx((0.02 - half, 0.02 + half), abs=1e-4)
    assert summary.within_noise is True and summary.positive == 2
    assert summary.verdict == "within noise (the 95% interval over seeds holds 0)"


def test_verdicts_in_words_and_one_seed_has_no_interval() -> None:
    steady = over_seeds(seeds=[0, 1, 2], gains=[0.010, 0.012, 0.011])
    assert steady.within_noise is False and steady.verdict == "a gain beyond noise"
    loss = over_seeds(seeds=[3, 4, 5], gains=[-0.010, -0.012, -0.011])
    assert loss.verdict == "a loss beyond noise" and loss.positive == 0
    alone = over_seeds(seeds=[7], gains=[0.05])
    assert (alone.low, alone.high, alone.within_noise) == (None, None, None)
    assert alone.verdict == "one seed: no interval over seeds"
    assert alone.to_dict()["seeds"] == [7] and alone.to_dict()["positive_seeds"] == 1
    with pytest.raises(ValueError, match="one gain per seed"):
        over_seeds(seeds=[0, 1], gains=[0.1])
