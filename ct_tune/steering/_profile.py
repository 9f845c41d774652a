"""Beta profiles: a found set of betas, saved as JSON and applied to a freshly built model.

A profile records the granularity, one beta per unit, c, the input shape used to find the ReLU calls
and a fingerprint of those calls; a ``custom`` profile also records its groups, so that the same units
can be made on a fresh model (other profiles are written exactly as before, without the field).
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
from ct_tune.steering._grouping import check_granularity, normalize_groups
from ct_tune.steering._sites import describe

__all__ = ["BetaProfile"]

FORMAT = "ct-tune/beta-profile"
FORMAT_VERSION = 1


@dataclass
class BetaProfile:
    """Betas per unit, with what is needed to apply them safely to another instance of the model."""

    granularity: str
    betas: dict[str, float]
    c: float = 0.5
    fingerprint: str | None = None  # hash of the ReLU call sites (see ct_tune.steering.Trace)
    input_shape: list[int] | None = None
    model: str | None = None  # class name, for messages
    metadata: dict[str, Any] = field(default_factory=dict)
    groups: dict[str, list[str]] | None = None  # granularity custom: unit -> module-path prefixes

    def __post_init__(self) -> None:
        check_granularity(self.granularity, self.groups)
        if self.groups:
            self.groups = normalize_groups(self.groups)
        check_c(self.c)
        if not self.betas:
            raise InputError("a beta profile needs at least one unit")
        for unit, beta in self.betas.items():
            check_beta(beta, name=f"beta[{unit!r}]")
        self.c = float(self.c)
        self.betas = {unit: float(beta) for unit, beta in self.betas.items()}

    def to_dict(self) -> dict[str, Any]:
        data = {"format": FORMAT, "format_version": FORMAT_VERSION, "ct_tune_version": __version__, **asdict(self)}
        if self.groups is None:
            del data["groups"]
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

    def describe(self) -> str:
        values = [f"{unit}={beta:.3f}" for unit, beta in self.betas.items() if not math.isclose(beta, 1.0)]
        return f"{self.granularity} profile, c={self.c:g}: " + (describe(values) if values else "all ReLU")
