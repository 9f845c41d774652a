"""Pipeline files: several studies run in order on the same model, data and stores (``_run`` runs them).

A pipeline file has a ``base`` (the parts of a study spec every stage shares: model, data, objectives,
run, stores) and ``stages``; each stage is a full study named ``<pipeline>.<stage>``, built from the
base plus the stage's own sections (search, sampler, pruner, budget, ...). A stage may start from an
earlier stage's result (``warm_start``): its best profile (every Pareto-optimal profile for several
objectives) is mapped onto the new units, enqueued as the first trials, and each unit's beta range is
centred on it. ``report`` names the stages whose best trials are scored once on the test split at the end.

A stage of ``kind: train`` trains CT's parameters instead of searching them (``ct_tune.trained.train_ct``,
its settings in ``train:``); a later search stage may warm-start from it (block values are the means of
the trained channel values of their sites).
Stages are linked by tags (the study's ``ct_tune.pipeline`` attribute, the MLflow parent runs'
``ct_tune.pipeline``/``ct_tune.stage`` tags) and the pipeline is resumable: a stage whose study has used
its budget is skipped, a stage interrupted halfway resumes.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from ct_tune._errors import InputError
from ct_tune._names import MAX_NAME, NAME_RULE, name_problem
from ct_tune._specs import StrictSpec, parse_yaml, validated
from ct_tune.search import StudySpec, paper_grid, spec_from_dict
from ct_tune.trained import TrainCTSpec

from pydantic import ConfigDict, Field, field_validator, model_validator

__all__ = [
    "PipelineSpec",
    "StageSpec",
    "load_pipeline",
    "pipeline_data",
    "pipeline_from_dict",
    "stage_spec",
    "train_stage_spec",
    "with_trials",
]
STAGE_SECTIONS = ("search", "objectives", "sampler", "pruner", "budget", "run")


class WarmStart(StrictSpec):
    model_config = ConfigDict(populate_by_name=True)  # merged with StrictSpec's

    from_stage: str = Field(alias="from")
    width: float = Field(default=0.1, gt=0, le=1)  # each unit searches [best - width, best + width]


class StageSpec(StrictSpec):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    kind: Literal["search", "train"] = "search"
    train: dict[str, Any] | None = None  # kind train: the settings of ``train_ct``
    warm_start: WarmStart | None = None
    search: dict[str, Any] = Field(default_factory=dict)
    objectives: list[Any] | None = None
    sampler: dict[str, Any] | str | None = None
    pruner: dict[str, Any] | str | None = None
    budget: dict[str, Any] = Field(default_factory=dict)
    run: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _sections_of_its_kind(self) -> StageSpec:
        if self.kind == "search" and self.train is not None:
            raise ValueError(f"stage {self.name!r}: train: belongs to a stage of kind train; add kind: train")
        if self.kind == "train":
            searched = [s for s in ("warm_start", "sampler", "pruner") if getattr(self, s) is not None]
            searched += [s for s in ("search", "budget") if getattr(self, s)]
            if searched:
                raise ValueError(
                    f"stage {self.name!r} is of kind train: {searched[0]} belongs to a search stage "
                    "(its settings go in train:)"
                )
        return self


class PipelineSpec(StrictSpec):
    name: str
    base: dict[str, Any]
    stages: list[StageSpec] = Field(min_length=1)
    report: list[str] | None = None  # stages whose best trials get a test-split report (default: all)

    @field_validator("name")
    @classmethod
    def _a_name_for_files(cls, value: str) -> str:
        problem = name_problem(value)
        if problem is not None:
            raise ValueError(f"{problem}; use {NAME_RULE}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PipelineSpec:
        names = [stage.name for stage in self.stages]
        longest = max(names, key=len)
        if name_problem(self.study_name(longest)) is not None:  # each stage is the study <pipeline>.<stage>
            raise ValueError(
                f"the study name {self.study_name(longest)!r} of stage {longest!r} is longer than {MAX_NAME} "
                "characters: shorten the pipeline's or the stage's name"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique; got {', '.join(names)}")
        for index, stage in enumerate(self.stages):
            if stage.warm_start and stage.warm_start.from_stage not in names[:index]:
                raise ValueError(
                    f"stage {stage.name!r} warm-starts from {stage.warm_start.from_stage!r}, which is not an earlier "
                    f"stage (earlier: {', '.join(names[:index]) or 'none'})"
                )
        unknown = [name for name in self.report or [] if name not in names]
        if unknown:
            raise ValueError(f"report names unknown stage(s) {', '.join(unknown)}; stages: {', '.join(names)}")
        for section in ("name", "search", "sampler", "pruner", "budget"):
            if section in self.base:
                raise ValueError(f"base.{section} belongs to a stage (each stage is its own study)")
        return self

    @property
    def report_stages(self) -> list[str]:
        return self.report if self.report is not None else [stage.name for stage in self.stages]

    def study_name(self, stage: str) -> str:
        return f"{self.name}.{stage}"

    def stage(self, name: str) -> StageSpec:
        return next(stage for stage in self.stages if stage.name == name)


def pipeline_from_dict(data: Any, *, source: str = "pipeline") -> PipelineSpec:
    """Validate a pipeline, including every stage's study spec; errors are one line."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: a pipeline is a YAML mapping with name, base and stages")
    pipeline = validated(PipelineSpec, data, source=source)
    for stage in pipeline.stages:  # every stage must be a valid study before anything runs
        if stage.kind == "train":
            train_stage_spec(pipeline, stage.name, source=source)
        else:
            stage_spec(pipeline, stage.name, source=source)
    return pipeline


def load_pipeline(path: str | os.PathLike[str]) -> PipelineSpec:
    """Read and validate a pipeline file (see ``pipelines/``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"pipeline file {path} does not exist (see pipelines/ for examples)")
    return pipeline_from_dict(parse_yaml(path), source=str(path))


def pipeline_data(pipeline: PipelineSpec) -> dict[str, Any]:
    """The pipeline as the mapping a file holds (``pipeline_from_dict`` of it is the same pipeline)."""
    return pipeline.model_dump(mode="json", by_alias=True, exclude_none=True)


def with_trials(data: Mapping[str, Any], trials: int | None) -> dict[str, Any]:
    """A pipeline mapping whose search stages each run ``trials`` trials (``--trials``; None: as written).

    A stage that enqueues the paper's grid but has fewer trials than the grid and the baseline drops the
    grid: with a handful of trials the baseline and TPE's own draws say more than the grid's first values.
    """
    changed = copy.deepcopy(dict(data))
    if trials is None:
        return changed
    if trials < 1:
        raise InputError(f"--trials must be at least 1, not {trials}")
    for stage in changed.get("stages", []):
        if stage.get("kind", "search") != "search":
            continue
        stage["budget"] = {"n_trials": trials}
        search = stage.get("search") or {}
        if search.get("enqueue_paper_grid") and trials < len(paper_grid()) + 1:
            search["enqueue_paper_grid"] = False
    return changed


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def stage_spec(
    pipeline: PipelineSpec,
    stage: str,
    *,
    ranges: Mapping[str, Mapping[str, float]] | None = None,
    source: str = "pipeline",
) -> StudySpec:
    """The study spec of one stage: the base, the stage's sections, and (warm start) per-unit ranges."""
    spec = _merge(pipeline.base, {"name": pipeline.study_name(stage)})
    stage_model = pipeline.stage(stage)
    for section in STAGE_SECTIONS:
        value = getattr(stage_model, section)
        if value in (None, {}):
            continue
        spec[section] = _merge(spec.get(section, {}), value) if isinstance(value, dict) else value
    if stage_model.warm_start is not None:
        # The baseline ran in the first stage; a warm-started stage searches around the earlier best.
        spec.setdefault("search", {}).setdefault("enqueue_baseline", False)
        spec["search"].setdefault("enqueue_paper_grid", False)
        if ranges:
            spec["search"]["ranges"] = {unit: dict(r) for unit, r in ranges.items()}
    return spec_from_dict(spec, source=f"{source} stage {stage!r}")


def train_stage_spec(pipeline: PipelineSpec, stage: str, *, source: str = "pipeline") -> TrainCTSpec:
    """The training of a ``kind: train`` stage: the base's model, data and run, one objective, ``train:``."""
    stage_model = pipeline.stage(stage)
    base = pipeline.base
    objectives = stage_model.objectives or base.get("objectives") or ["accuracy"]
    data = {
        "name": pipeline.study_name(stage),
        "model": base.get("model"),
        "data": base.get("data") or {},
        "objectives": objectives,
        "run": _merge(base.get("run") or {}, stage_model.run),
        "train": stage_model.train or {},
    }
    if base.get("tracking_uri"):
        data["tracking_uri"] = base["tracking_uri"]
    return TrainCTSpec.from_dict(data, source=f"{source} stage {stage!r}")
