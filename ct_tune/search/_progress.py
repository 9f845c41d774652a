"""What a launch shows of its trials: one typed line per finished trial, written on stderr under a tqdm bar
when asked for and stderr is a terminal (plain lines otherwise, so logs stay readable).

A ``TrialLine`` is made once, where a worker ends its trial (``TrialLoop``), and travels as it is: to the
progress view, into the launch's ``RunSummary``, and from a worker process to its launcher as an event.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["Progress", "TrialLine"]


@dataclass(frozen=True)
class TrialLine:
    """One finished trial: its number, the state Optuna holds, how long it took, its values and betas."""

    number: int
    state: str  # COMPLETE, PRUNED or FAIL
    seconds: float
    values: dict[str, float] = field(default_factory=dict)  # by objective name (none for a failed trial)
    betas: dict[str, float] = field(default_factory=dict)
    c: float | None = None
    rss_mb: float | None = None  # the worker's resident memory after the trial
    ended: float | None = None  # time.time() when it ended

    @property
    def finished(self) -> bool:
        """Counted towards the budget (COMPLETE or PRUNED)."""
        return self.state in ("COMPLETE", "PRUNED")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialLine:
        """A line from its dict (a worker's event carries more keys: they are left out)."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    def describe(self, objective_names: Sequence[str], units_shown: int = 6) -> str:
        """One human line, for the live log."""
        values = ", ".join(f"{n}={self.values[n]:.4f}" for n in objective_names if n in self.values)
        shown = ", ".join(f"{unit}={beta:.3f}" for unit, beta in list(self.betas.items())[:units_shown])
        more = f", ... (+{len(self.betas) - units_shown})" if len(self.betas) > units_shown else ""
        return f"trial {self.number:>4} {self.state:<8} {values or '-':<30} {self.seconds:6.1f}s  {shown}{more}"


class Progress:
    def __init__(self, total: int | None, bar: bool) -> None:
        self.bar = None
        if bar:
            from tqdm import tqdm

            # disable=None: no bar when stderr is not a terminal
            self.bar = tqdm(total=total, unit="trial", file=sys.stderr, dynamic_ncols=True, leave=False, disable=None)

    def trial(self, line: TrialLine, text: str) -> None:
        self.write(text)
        if self.bar is not None and line.finished:
            self.bar.update(1)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
