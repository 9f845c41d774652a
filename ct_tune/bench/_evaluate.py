"""Scoring one profile outside a study (what a trial does inside), and listing a model's units.

Both take the sections of a bench spec (a study spec's model, data, objectives and run), so that what they
load is exactly what a study with the same sections would load: the same split, input size and units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ct_tune._errors import InputError
from ct_tune.bench._bench import Bench
from ct_tune.bench._spec import bench_spec
from ct_tune.steering import CUSTOM, GRANULARITIES, BetaProfile, Groups, check_granularity, find_layout, group_sites

__all__ = ["evaluate_profile", "model_units"]


def evaluate_profile(
    *,
    model: Mapping[str, Any],
    data: Mapping[str, Any],
    beta: float | Mapping[str, float] | None = None,
    profile: BetaProfile | None = None,
    granularity: str = "global",
    groups: Groups | None = None,
    c: float = 0.5,
    objectives: Sequence[Mapping[str, Any] | str] = ("accuracy",),
    run: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score one beta profile on the val split: ``beta`` (one value, or ``{unit: beta}`` at ``granularity``,
    with ``groups`` for custom) or a saved ``profile``. ``model`` / ``data`` / ``run`` are the spec sections of
    the same name."""
    if (beta is None) == (profile is None):
        raise InputError("give exactly one of beta or profile")
    if profile is not None:
        granularity, groups = profile.unit_granularity, profile.groups
    check_granularity(granularity, groups)
    spec = bench_spec(model=model, data=data, objectives=objectives, run=run)
    with Bench.open(spec, granularity=granularity, groups=groups) as bench:
        assert bench.handle is not None
        if profile is not None:
            if profile.fingerprint and profile.fingerprint != bench.trace.fingerprint:
                raise InputError(
                    f"the profile was found on a model with other ReLU calls ({profile.model}); "
                    "use the model it was exported for"
                )
            betas, c = profile.steering_values(), profile.c
        else:
            betas = beta  # type: ignore[assignment]
        bench.handle.update(betas, c=c)
        results = bench.evaluator("val").evaluate()
        applied = profile.betas if profile is not None else bench.handle.betas
        return {
            "model": bench.model.describe(),
            "data": bench.data.describe(),
            "split": "val",
            "granularity": granularity,
            "betas": applied,
            "c": c,
            "results": {name: result.to_dict() for name, result in results.items()},
        }


def model_units(
    *, model: Mapping[str, Any], data: Mapping[str, Any], granularity: str = "block", groups: Groups | None = None
) -> dict[str, Any]:
    """The units of a model at ``granularity`` (one beta each; ``groups`` for custom), the ReLU sites of each,
    the unit counts at every granularity and the layout rule that found the stages."""
    check_granularity(granularity, groups)
    spec = bench_spec(model=model, data=data)
    with Bench.open(spec, granularity=granularity, groups=groups, device="cpu", steer=False) as bench:
        net, trace = bench.model.net, bench.trace
        units: dict[str, list[str]] = {}
        for site, unit in bench.site_units.items():
            units.setdefault(unit, []).append(site)
        counts = {g: len(set(group_sites(net, trace, g).values())) for g in GRANULARITIES}
        if groups:
            counts[CUSTOM] = len(units)
        layout = find_layout(net, trace)
        return {
            "model": type(net).__name__,
            "granularity": granularity,
            "units": list(units),
            "sites": units,
            "counts": counts,
            "layout": layout.rule if layout else "top-level children",
            "fingerprint": trace.fingerprint,
            "families": bench.families,  # unit -> relu, silu, gelu, gelu_tanh
        }
