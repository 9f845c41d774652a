"""How sure a gain is over seeds: the mean of per-seed paired gains and its t-interval over seeds.

A paired interval on test samples says how sure one seed's gain is on that seed's split; it says nothing
about a different split or sampler seed. Replicates (``ct-tune pipeline run --seeds``, the search-quality
benchmark) therefore summarise each profile's per-seed gains over the ReLU baseline with one function:
their mean, a Student t-interval over seeds, the count of seeds where the gain is positive and the
verdict in words. With one seed there is no interval and the verdict says so.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ct_tune.evidence._stats import CONFIDENCE

__all__ = ["OverSeeds", "over_seeds"]


@dataclass(frozen=True)
class OverSeeds:
    """Per-seed gains, their mean and t-interval over seeds (None with one seed)."""

    seeds: list[int]
    gains: list[float]
    mean: float
    low: float | None
    high: float | None
    confidence: float

    @property
    def positive(self) -> int:
        """Seeds whose gain is above zero."""
        return sum(gain > 0 for gain in self.gains)

    @property
    def within_noise(self) -> bool | None:
        """True when the interval over seeds holds 0; None with one seed (no interval)."""
        if self.low is None or self.high is None:
            return None
        return self.low <= 0 <= self.high

    @property
    def verdict(self) -> str:
        """The comparison in plain words."""
        if self.within_noise is None:
            return "one seed: no interval over seeds"
        if self.within_noise:
            return f"within noise (the {self.confidence:.0%} interval over seeds holds 0)"
        return f"a {'gain' if self.mean > 0 else 'loss'} beyond noise"

    def to_dict(self) -> dict[str, Any]:
        return {
            "seeds": self.seeds,
            "gains": self.gains,
            "mean": self.mean,
            "t_low": self.low,
            "t_high": self.high,
            "confidence": self.confidence,
            "interval": "student-t over seeds",
            "positive_seeds": self.positive,
            "within_noise": self.within_noise,
            "verdict": self.verdict,
        }


def over_seeds(*, seeds: Sequence[int], gains: Sequence[float], confidence: float = CONFIDENCE) -> OverSeeds:
    """The mean of the per-seed ``gains`` (one per seed, in the order of ``seeds``) with its t-interval."""
    from scipy.stats import t as student_t

    if not gains or len(gains) != len(seeds):
        raise ValueError(f"one gain per seed: {len(gains)} gain(s) for {len(seeds)} seed(s)")
    values = [float(gain) for gain in gains]
    mean = statistics.mean(values)
    if len(values) < 2:
        return OverSeeds(list(seeds), values, mean, None, None, confidence)
    half = student_t.ppf((1 + confidence) / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return OverSeeds(list(seeds), values, mean, float(mean - half), float(mean + half), confidence)
