"""The statistics of the report: bootstrap intervals of a mean, paired differences and exact McNemar."""

from __future__ import annotations

from math import comb

from ct_tune.evidence import bootstrap_mean, compare, mcnemar, rank_on_resamples

import numpy as np
import pytest


def correctness(n: int, accuracy: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < accuracy).astype(float)


@pytest.mark.parametrize("accuracy", [0.3, 0.9, 0.99])
def test_interval_contains_the_estimate_and_is_seeded(accuracy):
    scores = correctness(500, accuracy, seed=1)
    interval = bootstrap_mean(scores=scores, resamples=2000, seed=3)
    assert interval.estimate == pytest.approx(scores.mean())
    assert interval.low < interval.estimate < interval.high
    assert interval.n == 500 and interval.resamples == 2000 and interval.seed == 3 and interval.confidence == 0.95
    assert bootstrap_mean(scores=scores, resamples=2000, seed=3) == interval  # the same seed, the same interval
    assert bootstrap_mean(scores=scores, resamples=2000, seed=4) != interval


def test_interval_shrinks_with_more_samples_like_one_over_root_n():
    small = bootstrap_mean(scores=correctness(400, 0.8, seed=0), resamples=2000)
    large = bootstrap_mean(scores=correctness(6400, 0.8, seed=0), resamples=2000)
    ratio = (small.high - small.low) / (large.high - large.low)
    assert 3.0 < ratio < 5.5  # 16x the samples: about 4x narrower
    # and the width is the normal one, 2 * 1.96 * sqrt(p (1 - p) / n), within resampling noise
    assert large.high - large.low == pytest.approx(2 * 1.96 * np.sqrt(0.8 * 0.2 / 6400), rel=0.1)


def test_a_constant_score_has_a_zero_width_interval():
    interval = bootstrap_mean(scores=np.ones(50))
    assert (interval.low, interval.estimate, interval.high) == (1.0, 1.0, 1.0)


def test_mcnemar_on_identical_predictions_is_one():
    a = correctness(300, 0.7, seed=2)
    assert mcnemar(a=a, b=a.copy()) == 1.0
    same = compare(a=a, b=a.copy())
    assert same.p_value == 1.0 and same.a_only == same.b_only == 0
    assert (same.diff.low, same.diff.estimate, same.diff.high) == (0.0, 0.0, 0.0) and same.within_noise


def test_mcnemar_against_a_hand_computed_binomial():
    # 10 discordant samples, 8 where A alone is right and 2 where B alone is: two-sided exact p-value
    # 2 * P(X <= 2), X ~ Binomial(10, 1/2) = 2 * (1 + 10 + 45) / 1024 = 0.109375
    a = np.array([1] * 8 + [0] * 2 + [1] * 30 + [0] * 5)
    b = np.array([0] * 8 + [1] * 2 + [1] * 30 + [0] * 5)
    expected = 2 * sum(comb(10, k) for k in range(3)) / 2**10
    assert mcnemar(a=a, b=b) == pytest.approx(expected) == pytest.approx(0.109375)
    assert mcnemar(a=b, b=a) == pytest.approx(expected)  # symmetric
    one_sided = np.array([1] * 12 + [1] * 20)
    other = np.array([0] * 12 + [1] * 20)
    assert mcnemar(a=one_sided, b=other) == pytest.approx(2 / 2**12)  # 12 to 0: 2 * 0.5^12


def test_paired_difference_interval():
    b = correctness(2000, 0.8, seed=6)
    a = b.copy()
    a[np.flatnonzero(b == 0)[:100]] = 1.0  # A fixes 100 of B's errors and breaks 20 of its hits
    a[np.flatnonzero(b == 1)[:20]] = 0.0
    result = compare(a=a, b=b, resamples=2000)
    assert result.diff.estimate == pytest.approx(a.mean() - b.mean())
    assert result.diff.low < result.diff.estimate < result.diff.high
    assert (result.a_only, result.b_only) == (100, 20) and result.diff.estimate == pytest.approx(0.04)
    assert result.diff.low > 0 and result.p_value < 0.05 and not result.within_noise
    # paired beats unpaired: the interval of the difference is narrower than the sum of the two half-widths
    width = result.diff.high - result.diff.low
    unpaired = sum(i.high - i.low for i in (bootstrap_mean(scores=a), bootstrap_mean(scores=b)))
    assert width < unpaired / 2
    assert compare(a=b, b=a, resamples=2000).diff.estimate == pytest.approx(-result.diff.estimate)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="same samples"):
        compare(a=np.ones(3), b=np.ones(4))
    with pytest.raises(ValueError, match="0 or 1"):
        mcnemar(a=np.array([0.5, 1.0]), b=np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="no sample"):
        bootstrap_mean(scores=[])


def test_reselection_picks_the_candidate_that_holds_up_not_the_lucky_one():
    # B: 700 of 1,000 right. A: +160 -150 against B (best val, 0.710, but a noisy lead); C: +8 -0 (0.708, a
    # small lead that every resample keeps). Over resamples C ranks better on average than A.
    b = np.zeros(1000)
    b[:700] = 1
    a, c = b.copy(), b.copy()
    a[700:860], a[:150] = 1, 0
    c[860:868] = 1
    result = rank_on_resamples(correct=np.stack([a, b, c]), resamples=400, seed=0)
    assert np.argmax([a.mean(), b.mean(), c.mean()]) == 0 and result.picked == 2
    assert result.mean_rank[2] < result.mean_rank[0] < result.mean_rank[1]
    assert sum(result.mean_rank) == pytest.approx(6.0)  # ranks 1 + 2 + 3 on every resample
    assert result.mean_value == pytest.approx([a.mean(), b.mean(), c.mean()], abs=0.003)
    assert rank_on_resamples(correct=np.stack([a, b, c]), resamples=400, seed=0) == result  # seeded
    # identical candidates tie on every resample: the first is kept
    assert rank_on_resamples(correct=np.stack([b, b]), resamples=50).picked == 0
