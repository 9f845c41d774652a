"""How trained CT trains (a spec's ``train:``) and the search over those settings (``tune:``).

Every check runs before anything is trained, and every problem is one ``InputError`` line naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from ct_tune._errors import InputError
from ct_tune._specs import StrictSpec, validated
from ct_tune.steering._families import Family

from pydantic import Field, model_validator

__all__ = ["BETA_HIGH", "BETA_LOW", "TRAINABLE_OBJECTIVES", "TrainCTSettings", "TuneSpec", "check_trainable"]

BETA_LOW = 1e-3
BETA_HIGH = 1.0 - 1e-4
TRAINABLE_OBJECTIVES = ("probe", "accuracy")
GATED_START_C = 0.999

Granularity = Literal["global", "stage", "block", "site", "channel"]


class TrainCTSettings(StrictSpec):
    """How CT is trained (a spec's ``train:`` section); every default is the CT authors'."""

    granularity: Granularity = "channel"
    lr: float = Field(default=0.1, gt=0)  # Adam, CT parameters
    head_lr: float = Field(default=1e-3, gt=0)  # Adam, the probe's linear head
    # The authors' start for ReLU units. SiLU and GELU units start at their own activation, beta0 and
    # c = 0.999 (c = 1 is out of reach of the logit parametrisation), as the authors start GELU Swin,
    # unless these are given.
    init_beta: float = Field(default=0.8, ge=BETA_LOW, le=BETA_HIGH)
    init_c: float = Field(default=0.5, gt=0, lt=1)
    train_c: bool = True  # False: c stays init_c
    epochs: int = Field(default=20, ge=1)
    lr_step: int | None = Field(default=10, ge=1)  # epoch after which both learning rates are multiplied ...
    lr_decay: float = Field(default=0.1, gt=0, le=1)  # ... by this
    batch_size: int = Field(default=32, ge=1)
    patience: int | None = Field(default=None, ge=1)  # epochs without a better val score before stopping
    seed: int = 0  # head initialisation and batch order

    def start(self, family: Family) -> tuple[float, float]:
        """Where a unit of ``family`` starts: (beta, c), the settings' values where they are given."""
        given = self.model_fields_set
        beta = family.baseline if family.gated and "init_beta" not in given else self.init_beta
        c = GATED_START_C if family.gated and "init_c" not in given else self.init_c
        return beta, c

    @property
    def unit_granularity(self) -> str:
        """The granularity of the units trained: one value each, or (``channel``) a vector per ReLU site."""
        return "site" if self.granularity == "channel" else self.granularity

    @classmethod
    def parse(cls, data: Mapping[str, Any] | None, *, source: str = "settings") -> TrainCTSettings:
        """Settings from a mapping; a bad value is one ``InputError`` naming ``train.<field>``."""
        if data is not None and not isinstance(data, Mapping):
            raise InputError(f"{source}: the train section is a mapping (lr:, epochs:, ...); got {data!r}")
        return validated(cls, dict(data or {}), source=source, section="train")


class _Range(StrictSpec):
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if not self.low < self.high:
            raise ValueError(f"low must be below high; got {self.low} and {self.high}")
        return self


class TuneSpec(StrictSpec):
    """An Optuna study over trained CT's own settings (a spec's ``tune:`` section): the settings named here
    are searched, the others stay as in ``train:``. Each trial is one training, scored by its best val epoch."""

    n_trials: int = Field(default=8, ge=1)
    seed: int = 0  # TPE's seed
    lr: _Range | None = None
    head_lr: _Range | None = None
    init_beta: _Range | None = None
    epochs: _Range | None = None  # integers
    granularity: list[Granularity] | None = Field(default=None, min_length=1)

    def suggest(self, trial: Any, base: TrainCTSettings) -> TrainCTSettings:
        """The settings of one trial (``trial`` is an ``optuna.Trial``)."""
        values: dict[str, Any] = {}
        for name in ("lr", "head_lr", "init_beta"):
            box = getattr(self, name)
            if box is not None:
                values[name] = trial.suggest_float(name, box.low, box.high, log=box.log)
        if self.epochs is not None:
            values["epochs"] = trial.suggest_int("epochs", int(self.epochs.low), int(self.epochs.high))
        if self.granularity is not None:
            values["granularity"] = trial.suggest_categorical("granularity", list(self.granularity))
        return TrainCTSettings.parse({**base.model_dump(), **values})


def check_trainable(name: Any, source: str) -> None:
    """Refuse an objective trained CT cannot train on (one line, saying what to do instead)."""
    if name not in TRAINABLE_OBJECTIVES:
        raise InputError(
            f"{source}: trained CT trains on the probe (transfer) or accuracy objective, not {name!r}; "
            "search betas for the adversarial objective instead"
        )
