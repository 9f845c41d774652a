"""Beta profiles: a found set of betas, saved as JSON and applied to a freshly built model.

A profile records the granularity, one beta per unit, c, the input shape used to find the ReLU calls
and a fingerprint of those calls. Applying it re-traces the new model (with that input shape, unless
another example input is given) and refuses a model whose ReLU calls differ, so a profile cannot be
silently applied to the wrong architecture.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ct_tune._errors import InputError
from ct_tune._version import __version__
from ct_tune.activation import check_beta, check_c
from ct_tune.grouping import check_granularity
from ct_tune.sites import describe
from ct_tune.steering import SteeringHandle, checked_trace, steer_traced

import torch
from torch import nn

__all__ = ["BetaProfile", "apply_profile"]

FORMAT = "ct-tune/beta-profile"
FORMAT_VERSION = 1


@dataclass
class BetaProfile:
    """Betas per unit, with what is needed to apply them safely to another instance of the model."""

    granularity: str
    betas: dict[str, float]
    c: float = 0.5
    fingerprint: str | None = None  # hash of the ReLU call sites (see ct_tune.sites.Trace)
    input_shape: list[int] | None = None
    model: str | None = None  # class name, for messages
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_granularity(self.granularity)
        check_c(self.c)
        if not self.betas:
            raise InputError("a beta profile needs at least one unit")
        for unit, beta in self.betas.items():
            check_beta(beta, name=f"beta[{unit!r}]")

    @classmethod
    def from_handle(cls, handle: SteeringHandle, **metadata: Any) -> BetaProfile:
        betas = handle.betas
        if any(isinstance(value, torch.Tensor) for value in betas.values()):
            raise InputError("per-sample (tensor) betas cannot be saved as a profile; update() with floats first")
        trace = handle.trace
        return cls(
            granularity=handle.granularity,
            betas={unit: float(value) for unit, value in betas.items()},
            c=handle.c,
            fingerprint=trace.fingerprint if trace else None,
            input_shape=list(trace.input_shape) if trace and trace.input_shape else None,
            model=type(handle.model).__name__,
            metadata=dict(metadata),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "ct_tune_version": __version__, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "profile") -> BetaProfile:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InputError(f'{source} is not a ct-tune beta profile (no "format": "{FORMAT}" field)')
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise InputError(
                f"{source} was written by a newer ct-tune (format {data['format_version']}); upgrade ct-tune"
            )
        try:
            return cls(
                granularity=data["granularity"],
                betas={str(k): float(v) for k, v in data["betas"].items()},
                c=float(data.get("c", 0.5)),
                fingerprint=data.get("fingerprint"),
                input_shape=data.get("input_shape"),
                model=data.get("model"),
                metadata=data.get("metadata") or {},
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise InputError(f"{source} is missing or has a malformed field: {error}") from error

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the profile as JSON (atomically: a crash never leaves half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BetaProfile:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(f"profile file {path} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InputError(f"profile file {path} is not valid JSON ({error}); export it again") from None
        return cls.from_dict(data, source=f"profile file {path}")

    def describe(self) -> str:
        values = [f"{unit}={beta:.3f}" for unit, beta in self.betas.items() if not math.isclose(beta, 1.0)]
        return f"{self.granularity} profile, c={self.c:g}: " + (describe(values) if values else "all ReLU")


def apply_profile(
    model: nn.Module,
    profile: BetaProfile | str | os.PathLike[str],
    *,
    example_input: Any = None,
    strict: bool = True,
) -> SteeringHandle:
    """Steer ``model`` with a saved profile (a ``BetaProfile`` or a path to its JSON).

    ``example_input`` defaults to zeros of the profile's recorded input shape, on the model's device.
    With ``strict`` (the default) a model whose ReLU calls differ from the profile's is refused.
    """
    if not isinstance(profile, BetaProfile):
        profile = BetaProfile.load(profile)
    if example_input is None and profile.granularity != "global":
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
    return steer_traced(model, profile.betas, c=profile.c, granularity=profile.granularity, trace=trace)


def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")
