"""Warm starts: a stage starts from an earlier stage's best profiles (or a trained stage's profile).

Each profile is mapped onto the new stage's units (each unit takes the mean beta of its ReLU sites), the
stage's per-unit ranges are centred on them, and they are enqueued as its first trials.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ct_tune._errors import InputError
from ct_tune.bench import Bench
from ct_tune.search import Study, StudySpec
from ct_tune.steering import BetaProfile, Groups, Trace, group_sites

from torch import nn

__all__ = ["WarmStartProfiles", "map_profile", "warm_start_profiles", "warm_start_ranges"]


@dataclass
class WarmStartProfiles:
    """The profiles a stage starts from, at its own granularity, and the c they were found with."""

    profiles: list[dict[str, float]] = field(default_factory=list)
    c: float = 0.5


def map_profile(
    net: nn.Module,
    trace: Trace,
    betas: Mapping[str, float],
    source: str,
    target: str,
    *,
    source_groups: Groups | None = None,
    target_groups: Groups | None = None,
) -> dict[str, float]:
    """A profile at granularity ``source`` expressed at ``target``: each target unit takes the mean beta of
    its ReLU sites (global -> block copies the value; block -> stage averages the blocks of a stage); the
    groups are those of a ``custom`` granularity."""
    source_units = group_sites(net, trace, source, source_groups)
    target_units = group_sites(net, trace, target, target_groups)
    collected: dict[str, list[float]] = {}
    for site, unit in target_units.items():
        collected.setdefault(unit, []).append(float(betas.get(source_units[site], 1.0)))
    return {unit: sum(values) / len(values) for unit, values in collected.items()}


def warm_start_profiles(
    bench: Bench, spec: StudySpec, source: str, studies: Mapping[str, Study], trained: Mapping[str, BetaProfile]
) -> WarmStartProfiles:
    """The best profiles of stage ``source`` (every Pareto-optimal one for several objectives; a trained
    stage's profile: the mean of each unit's trained channel values), mapped onto ``spec``'s units."""
    search = spec.search
    if source in trained:
        profile = trained[source]
        betas = map_profile(
            bench.model.net,
            bench.trace,
            profile.betas,
            profile.unit_granularity,
            search.granularity,
            target_groups=search.groups,
        )
        return WarmStartProfiles([betas], profile.c)
    earlier = studies[source]
    chosen = earlier.best()
    if not chosen:
        raise InputError(f"stage {source!r} has no completed trial to warm-start from; run it (or raise its budget)")
    found = WarmStartProfiles(c=chosen[-1].c)
    for trial in chosen:
        found.profiles.append(
            map_profile(
                bench.model.net,
                bench.trace,
                trial.betas,
                earlier.spec.search.granularity,
                search.granularity,
                source_groups=earlier.spec.search.groups,
                target_groups=search.groups,
            )
        )
    return found


def warm_start_ranges(
    profiles: Sequence[Mapping[str, float]],
    width: float,
    low: float,
    high: float,
    *,
    bounds: Mapping[str, tuple[float, float]] | None = None,
) -> dict[str, dict[str, float]]:
    """Per-unit ranges covering every warm-start profile +- ``width``, inside the stage's [low, high] (or the
    unit's own ``bounds``: a SiLU or GELU unit's family range)."""
    ranges = {}
    for unit in profiles[0]:
        floor, ceiling = (bounds or {}).get(unit, (low, high))
        values = [profile[unit] for profile in profiles]
        lo, hi = max(floor, min(values) - width), min(ceiling, max(values) + width)
        if hi <= lo:  # the earlier best sits at the edge of this stage's range
            lo, hi = max(floor, hi - 2 * width), min(ceiling, lo + 2 * width)
        ranges[unit] = {"low": round(lo, 6), "high": round(hi, 6)}
    return ranges
