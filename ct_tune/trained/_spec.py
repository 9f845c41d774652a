"""A ``ct-tune train-ct`` spec: the bench trained on (model, data, one objective, run), the ``train:``
settings and optionally ``tune:``. Every section is checked before anything is trained."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ct_tune._errors import InputError
from ct_tune._specs import parse_yaml, validated
from ct_tune.bench import BenchSpec, bench_spec
from ct_tune.trained._loop import TrainedCT, train_on_bench
from ct_tune.trained._settings import TrainCTSettings, TuneSpec, check_trainable

__all__ = ["TrainCTSpec"]

SPEC_SECTIONS = ("name", "model", "data", "objective", "objectives", "run", "train", "tune", "storage", "tracking_uri")


@dataclass(frozen=True)
class TrainCTSpec:
    """A ``ct-tune train-ct`` spec: the bench trained on (a study spec's model / data / run sections and one
    objective), ``train:`` settings, and optionally ``tune:`` (a search over those settings)."""

    name: str
    bench: BenchSpec
    settings: TrainCTSettings
    tracking_uri: str | None = None
    tune: TuneSpec | None = None
    storage: str | None = None  # the Optuna storage of ``tune`` (default as for studies)

    @property
    def objective(self) -> str:
        return self.bench.objectives[0].name

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "spec", overrides: Mapping[str, Any] | None = None) -> TrainCTSpec:
        """Check every section before anything runs (one ``InputError`` line naming the field)."""
        if not isinstance(data, dict):
            raise InputError(f"{source}: a train-ct spec is a YAML mapping (model:, data:, train:, ...)")
        unknown = [key for key in data if key not in SPEC_SECTIONS]
        if unknown:
            raise InputError(
                f"{source}: unknown section {unknown[0]!r}; a train-ct spec has {', '.join(SPEC_SECTIONS)}"
            )
        if "model" not in data:
            raise InputError(f"{source}: model: required section is missing")
        if "objective" in data and "objectives" in data:
            raise InputError(f"{source}: give objective or objectives, not both")
        objectives = data.get("objectives", [data.get("objective", "probe")])
        if not isinstance(objectives, list) or len(objectives) != 1:
            raise InputError(f"{source}: trained CT trains on one objective (probe or accuracy); got {objectives!r}")
        objective = objectives[0]
        check_trainable(objective if isinstance(objective, str) else (objective or {}).get("name"), source)
        train = {**(data.get("train") or {}), **{k: v for k, v in (overrides or {}).items() if v is not None}}
        settings = TrainCTSettings.parse(train, source=source)
        tune = None if data.get("tune") is None else validated(TuneSpec, data["tune"], source=source, section="tune")
        bench = bench_spec(
            model=data["model"], data=data.get("data"), objectives=objectives, run=data.get("run"), source=source
        )
        name = str(data.get("name") or "train-ct")
        return cls(name, bench, settings, data.get("tracking_uri"), tune, data.get("storage"))

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, overrides: Mapping[str, Any] | None = None) -> TrainCTSpec:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"train-ct spec {path} does not exist; give the path of a YAML file")
        return cls.from_dict(parse_yaml(path), source=str(path), overrides=overrides)

    def identity(self) -> dict[str, Any]:
        """Everything the trained profile depends on (a pipeline reuses a profile made with the same)."""
        objective = self.bench.objectives[0]
        return {
            "model": self.bench.model.model_dump(exclude_defaults=True),
            "data": self.bench.data.model_dump(exclude_defaults=True),
            "objective": {"name": objective.name, **objective.model_dump(exclude_defaults=True, exclude={"direction"})},
            "run": self.bench.run.model_dump(exclude_defaults=True),
            "settings": self.settings.model_dump(),
        }

    def train(self, *, on_epoch: Callable[[dict[str, float]], None] | None = None) -> TrainedCT:
        return train_on_bench(self.bench, self.settings, on_epoch=on_epoch)
