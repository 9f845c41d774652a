"""Beta profiles: a found set of betas, saved as JSON and applied to a freshly built model.

A profile records the granularity, one beta per unit, c, the input shape used to find the ReLU calls
and a fingerprint of those calls; a ``custom`` profile also records its groups, so that the same units
can be made on a fresh model (other profiles are written exactly as before, without the field).

Trained CT (``ct_tune.training.train_ct``) learns a beta and a c per unit or per channel: its profiles
carry ``channels`` (``{unit: {"beta": [...], "c": [...]}}``, one entry per channel of the unit's ReLU
input, or a single entry per unit), with ``betas`` and ``c`` holding the means (what a search warm-starts
from). Granularity ``channel`` has the units of ``site`` (a vector of channels belongs to one ReLU call).
Such profiles are written as format version 2, so that an older ct-tune refuses them instead of applying
the means; profiles without ``channels`` stay version 1, and every older profile still loads.
A profile found on a SiLU or GELU network records each unit's family (``families``; absent for ReLU
networks, whose profiles are written exactly as before), so that it is never applied to a network whose
units apply other functions: the same beta is another activation there.

``apply_profile`` (``ct_tune.steering._apply``) re-traces the new model and refuses one whose ReLU calls
differ, so a profile cannot be silently applied to the wrong architecture.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ct_tune._errors import InputError
from ct_tune._files import write_atomically
from ct_tune._version import __version__
from ct_tune.steering._activation import check_beta, check_c
from ct_tune.steering._channel import ChannelCT
from ct_tune.steering._families import FAMILIES
from ct_tune.steering._grouping import check_granularity, normalize_groups
from ct_tune.steering._sites import describe

__all__ = ["BetaProfile"]

FORMAT = "ct-tune/beta-profile"
FORMAT_VERSION = 2
CHANNEL = "channel"  # per-channel values at the units of granularity "site"


def channel_granularity(granularity: str, channels: dict[str, dict[str, list[float]]] | None) -> str:
    """``channel`` for site units holding vectors of several channels, else the granularity itself."""
    if granularity == "site" and channels and any(len(entry["beta"]) > 1 for entry in channels.values()):
        return CHANNEL
    return granularity


@dataclass
class BetaProfile:
    """Betas per unit, with what is needed to apply them safely to another instance of the model."""

    granularity: str
    betas: dict[str, float]
    c: float | None = 0.5  # None: each unit's family's c (0.5 for ReLU, 1 for SiLU and GELU)
    fingerprint: str | None = None  # hash of the ReLU call sites (see ct_tune.steering.Trace)
    input_shape: list[int] | None = None
    model: str | None = None  # class name, for messages
    metadata: dict[str, Any] = field(default_factory=dict)
    groups: dict[str, list[str]] | None = None  # granularity custom: unit -> module-path prefixes
    channels: dict[str, dict[str, list[float]]] | None = None  # trained CT: unit -> {"beta": [...], "c": [...]}
    families: dict[str, str] | None = None  # unit -> "silu", "gelu", ... (None: every unit is ReLU)

    def __post_init__(self) -> None:
        if self.granularity == CHANNEL and not self.channels:
            raise InputError('granularity "channel" needs per-channel values (the profile\'s "channels" field)')
        check_granularity(self.unit_granularity, self.groups)
        if self.groups:
            self.groups = normalize_groups(self.groups)
        if self.c is not None:
            check_c(self.c)
            self.c = float(self.c)
        if not self.betas:
            raise InputError("a beta profile needs at least one unit")
        for unit, beta in self.betas.items():
            check_beta(beta, name=f"beta[{unit!r}]")
        self.betas = {unit: float(beta) for unit, beta in self.betas.items()}
        if self.families is not None:
            self.families = _checked_families(self.families, self.betas)
        if self.channels is not None:
            self.channels = _checked_channels(self.channels, self.betas, self.granularity)

    @property
    def unit_granularity(self) -> str:
        """The granularity whose units this profile's betas belong to (``site`` for ``channel``)."""
        return "site" if self.granularity == CHANNEL else self.granularity

    def steering_values(self) -> dict[str, Any]:
        """What ``SteeringHandle.update`` takes: floats, or one ``ChannelCT`` per unit of a trained profile."""
        if self.channels is None:
            return dict(self.betas)
        return {unit: ChannelCT(entry["beta"], entry["c"], name=unit) for unit, entry in self.channels.items()}

    def to_dict(self) -> dict[str, Any]:
        version = FORMAT_VERSION if self.channels is not None else 1
        data = {"format": FORMAT, "format_version": version, "ct_tune_version": __version__, **asdict(self)}
        for name in ("groups", "channels", "families"):
            if data[name] is None:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "profile") -> BetaProfile:
        """A profile from its JSON form; any field of the wrong type is one ``InputError`` naming it."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InputError(f'{source} is not a ct-tune beta profile (no "format": "{FORMAT}" field)')
        version = data.get("format_version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise InputError(f"{source}: format_version must be an integer, not {version!r}; export the profile again")
        if version > FORMAT_VERSION:
            raise InputError(f"{source} was written by a newer ct-tune (format {version}); upgrade ct-tune")
        for name in ("granularity", "betas"):
            if name not in data:
                raise InputError(f"{source} is missing the field {name!r}; export the profile again")
        betas, shape = data["betas"], data.get("input_shape")
        if not isinstance(betas, dict):
            raise InputError(f"{source}: betas must map unit names to numbers, not {betas!r}")
        if shape is not None and not (
            isinstance(shape, list) and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
        ):
            raise InputError(f"{source}: input_shape must be a list of positive integers or null, not {shape!r}")
        for name, kind, text in (
            ("fingerprint", str, "a string"),
            ("model", str, "a string"),
            ("metadata", dict, "an object"),
            ("channels", dict, "an object"),
            ("families", dict, "an object"),
        ):
            value = data.get(name)
            if value is not None and not isinstance(value, kind):
                raise InputError(f"{source}: {name} must be {text} or null, not {value!r}")
        try:
            return cls(
                granularity=data["granularity"],
                betas=dict(betas),
                c=data.get("c", 0.5),
                fingerprint=data.get("fingerprint"),
                input_shape=shape,
                model=data.get("model"),
                metadata=data.get("metadata") or {},
                groups=data.get("groups"),
                channels=data.get("channels"),
                families=data.get("families"),
            )
        except InputError as error:
            raise InputError(f"{source}: {error}") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the profile as JSON (atomically: a crash never leaves half a file)."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        return write_atomically(path, lambda temporary: temporary.write_text(text), what="profile", example="best.json")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BetaProfile:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(f"profile file {path} does not exist") from None
        except IsADirectoryError:
            raise InputError(f"profile {path} is a directory; give the path of a profile JSON file") from None
        except OSError as error:
            raise InputError(f"cannot read profile file {path} ({error.strerror}); check its permissions") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InputError(f"profile file {path} is not valid JSON ({error}); export it again") from None
        return cls.from_dict(data, source=f"profile file {path}")

    def family_of(self, unit: str) -> str:
        """The activation family of ``unit`` (``relu`` where the profile records none)."""
        return (self.families or {}).get(unit, "relu")

    def describe(self) -> str:
        if self.channels is not None:
            sizes = sum(len(entry["beta"]) for entry in self.channels.values())
            low, high = min(self.betas.values()), max(self.betas.values())
            return (
                f"trained {self.granularity} profile, {len(self.channels)} units, {sizes} betas, mean c={self.c:.3f}: "
                f"unit mean beta {low:.3f} .. {high:.3f}"
            )
        values = [f"{unit}={beta:.3f}" for unit, beta in self.betas.items() if not math.isclose(beta, 1.0)]
        c = "each family's c" if self.c is None else f"c={self.c:g}"
        return f"{self.granularity} profile, {c}: " + (describe(values) if values else "all ReLU")


def _checked_channels(channels: Any, betas: dict[str, float], granularity: str) -> dict[str, dict[str, list[float]]]:
    """Per-channel values: the same units as ``betas``, numbers in range, one c per beta."""
    if not isinstance(channels, dict) or set(channels) != set(betas):
        raise InputError("channels must give {beta: [...], c: [...]} for exactly the units of betas")
    checked: dict[str, dict[str, list[float]]] = {}
    for unit, entry in channels.items():
        beta, c = (entry.get(key) if isinstance(entry, dict) else None for key in ("beta", "c"))
        if not (isinstance(beta, list) and isinstance(c, list) and beta and len(beta) == len(c)):
            raise InputError(f"channels[{unit!r}] must hold two lists of one length, beta and c")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in beta + c):
            raise InputError(f"channels[{unit!r}]: every beta and c must be a number")
        if len(beta) > 1 and granularity != CHANNEL:
            raise InputError(f"channels[{unit!r}] holds {len(beta)} values: several per unit need granularity channel")
        if not all(0.0 < v <= 1.0 for v in beta):
            raise InputError(f"channels[{unit!r}]: every beta must be in (0, 1] (1 is plain ReLU)")
        if not all(0.0 <= v <= 1.0 for v in c):
            raise InputError(f"channels[{unit!r}]: every c must be in [0, 1]")
        checked[unit] = {"beta": [float(v) for v in beta], "c": [float(v) for v in c]}
    return checked


def _checked_families(families: Any, betas: dict[str, float]) -> dict[str, str]:
    """Families of exactly the units of ``betas``, each a known family name."""
    if not isinstance(families, dict) or set(families) != set(betas):
        raise InputError("families must give an activation family for exactly the units of betas")
    for unit, name in families.items():
        if name not in FAMILIES:
            raise InputError(f"families[{unit!r}] is {name!r}; known families: {', '.join(FAMILIES)}")
    return dict(families)
