"""A replicate set's report: each reported profile's test value per seed and its paired gain over that
seed's ReLU baseline, summarised over seeds (``ct_tune.evidence.over_seeds``: mean, t-interval, verdict).

A profile is found again in every seed by what it is, not by its betas: the ReLU baseline, and each reported
stage's best (``best global``, ``best block``, ``best trained block``). Where a stage reports a Pareto front,
the profile of an objective is the front's member with the best val value on it (chosen on val, as the
search chose). A gain is oriented so that positive is better (a minimised objective's difference is negated);
it is the paired difference on the seed's test samples, the one the seed's own report shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ct_tune.evidence import OverSeeds, ReportRow, over_seeds
from ct_tune.pipelines._result import PipelineResult

__all__ = ["RELU", "ReplicateRow", "SeedValue", "combine"]

RELU = "ReLU baseline"
OWN = "own activation baseline"  # the baseline of a SiLU or GELU network


@dataclass(frozen=True)
class SeedValue:
    seed: int
    test: float
    gain: float | None  # over the seed's ReLU baseline, positive = better; None on the baseline's own row


@dataclass(frozen=True)
class ReplicateRow:
    """One profile and objective over the seeds of a replicate set."""

    profile: str  # RELU (OWN for a SiLU or GELU network), or "best <granularity>"
    stage: str
    objective: str
    values: list[SeedValue]
    gain: OverSeeds | None  # None for the baseline

    @property
    def is_baseline(self) -> bool:
        return self.profile in (RELU, OWN)

    @property
    def test_mean(self) -> float:
        return sum(value.test for value in self.values) / len(self.values)

    @property
    def key(self) -> str:
        """The row's MLflow metric prefix: ``relu.<objective>`` or ``<stage>.<objective>``."""
        return f"{'relu' if self.is_baseline else self.stage}.{self.objective}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "stage": self.stage,
            "objective": self.objective,
            "seeds": [value.seed for value in self.values],
            "test": {str(value.seed): value.test for value in self.values},
            "test_mean": self.test_mean,
            "gain": None if self.gain is None else self.gain.to_dict(),
        }

    def metrics(self) -> dict[str, float]:
        """``<key>.test.mean``, ``<key>.test.s<seed>``, and for a gain its mean, interval, per-seed values and
        the count of positive seeds."""
        found = {f"{self.key}.test.mean": self.test_mean}
        found.update({f"{self.key}.test.s{value.seed}": value.test for value in self.values})
        if self.gain is not None:
            gain = self.gain
            found[f"{self.key}.gain.mean"] = gain.mean
            if gain.low is not None and gain.high is not None:
                found[f"{self.key}.gain.t_low"], found[f"{self.key}.gain.t_high"] = gain.low, gain.high
            found[f"{self.key}.gain.positive_seeds"] = float(gain.positive)
            found.update({f"{self.key}.gain.s{s}": g for s, g in zip(gain.seeds, gain.gains, strict=True)})
        return found


def combine(results: Mapping[int, PipelineResult]) -> list[ReplicateRow]:
    """The rows over seeds of each seed's pipeline result (in the order the first seed reports them)."""
    keyed: dict[tuple[str, str, str], list[SeedValue]] = {}
    for seed, result in results.items():
        for key, value in _seed_values(seed, result).items():
            keyed.setdefault(key, []).append(value)
    rows = []
    for (profile, stage, objective), values in keyed.items():
        gained = [value for value in values if value.gain is not None]
        summary = None
        if profile not in (RELU, OWN) and gained:
            summary = over_seeds(seeds=[v.seed for v in gained], gains=[v.gain for v in gained if v.gain is not None])
        rows.append(ReplicateRow(profile, stage, objective, values, summary))
    return rows


def _seed_values(seed: int, result: PipelineResult) -> dict[tuple[str, str, str], SeedValue]:
    """Each profile's test value and gain on one seed, by (profile, stage, objective)."""
    baseline = next((row for row in result.report if row.is_baseline), None)
    by_stage: dict[str, list[ReportRow]] = {}
    for row in result.report:
        if not row.is_baseline:
            by_stage.setdefault(row.stage or "", []).append(row)
    found: dict[tuple[str, str, str], SeedValue] = {}
    for objective in result.reported_objectives:
        sign = -1.0 if result.directions.get(objective) == "minimize" else 1.0
        if baseline is not None and objective in baseline.test:
            label = RELU if baseline.baseline_label == "ReLU" else OWN
            found[(label, baseline.stage or "", objective)] = SeedValue(seed, baseline.test[objective], None)
        for stage, rows in by_stage.items():
            scored = [row for row in rows if objective in row.test]
            if not scored:
                continue
            row = _on_val(scored, objective, sign)
            gain = _gain(row, baseline, objective)
            value = SeedValue(seed, row.test[objective], None if gain is None else sign * gain)
            found[(f"best {row.granularity}", stage, objective)] = value
    return found


def _on_val(rows: Sequence[ReportRow], objective: str, sign: float) -> ReportRow:
    """The row chosen on val for ``objective`` (the only one, or a Pareto front's best on it; the first of
    equals)."""
    return max(rows, key=lambda row: sign * row.val.get(objective, float("-inf") * sign))


def _gain(row: ReportRow, baseline: ReportRow | None, objective: str) -> float | None:
    """The paired difference with the ReLU baseline on the same test samples (the row's own comparison; a
    row that is the baseline's trial has none: then the difference of the test values)."""
    versus = (row.vs_relu or {}).get(objective)
    if versus is not None:
        return versus.comparison.diff.estimate
    if baseline is None or objective not in baseline.test:
        return None
    return row.test[objective] - baseline.test[objective]
