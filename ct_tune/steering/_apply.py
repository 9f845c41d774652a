"""Applying a saved profile to a freshly built model (kept apart from ``BetaProfile`` itself so that
profiles, which the handle creates, never import the handle)."""

from __future__ import annotations

import os
from typing import Any

from ct_tune._errors import InputError
from ct_tune.steering._families import family_named
from ct_tune.steering._handle import SteeringHandle, checked_trace, steer_traced
from ct_tune.steering._profile import BetaProfile

import torch
from torch import nn

__all__ = ["apply_profile"]


def apply_profile(
    model: nn.Module,
    profile: BetaProfile | str | os.PathLike[str],
    *,
    example_input: Any = None,
    strict: bool = True,
) -> SteeringHandle:
    """Steer ``model`` with a saved profile, as ``steer`` does (undo with ``.remove()``).

    Args:
        model: a fresh copy of the network the profile was found on.
        profile: a ``BetaProfile``, or the path of its JSON (``study export``, ``train-ct --out``).
        example_input: one input batch to find the ReLU calls; default zeros of the profile's recorded
            input shape, on the model's device.
        strict: refuse a model whose ReLU calls differ from the profile's (another architecture); False
            applies the betas of the units the model has.
    """
    if not isinstance(profile, BetaProfile):
        profile = BetaProfile.load(profile)
    if example_input is None and profile.unit_granularity != "global":
        if not profile.input_shape:
            raise InputError("the profile records no input shape: pass example_input to apply_profile")
        example_input = torch.zeros(profile.input_shape, device=_device_of(model))
    trace = checked_trace(model, example_input) if example_input is not None else None
    if strict and profile.fingerprint and trace is not None and trace.fingerprint != profile.fingerprint:
        raise InputError(
            f"the profile was found on a model with other ReLU calls ({profile.model}, fingerprint "
            f"{profile.fingerprint}) than this {type(model).__name__} ({trace.fingerprint}); "
            "use the same architecture, or pass strict=False"
        )
    handle = steer_traced(
        model,
        profile.steering_values(),
        c=profile.c,
        granularity=profile.unit_granularity,
        trace=trace,
        groups=profile.groups,
    )
    try:
        check_families(profile, handle.families, model=type(model).__name__)
    except InputError:
        handle.remove()
        raise
    return handle


def check_families(profile: BetaProfile, families: dict[str, str], *, model: str) -> None:
    """Refuse a profile whose units apply other activations here than where it was found (one line)."""
    for unit, here in families.items():
        there = profile.family_of(unit) if unit in profile.betas else here
        if there != here:
            raise InputError(
                f"the profile's unit {unit!r} was found on {family_named(there).label} and this {model} applies "
                f"{family_named(here).label} there: the same beta is another function; use a profile found on "
                "this network (a ReLU profile steers ReLU networks, a GELU profile GELU ones)"
            )


def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")
