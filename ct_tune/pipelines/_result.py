"""What a pipeline run gives back: each stage's outcome and the test-split report (one seed of a replicate
set gives back the same)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ct_tune.evidence import ReportRow

__all__ = ["PipelineResult", "StageOutcome"]


@dataclass
class StageOutcome:
    stage: str
    study: str
    granularity: str
    stopped: str
    # What the stage ran and what that cost, earlier runs of a resumed stage included: a study's finished
    # trials (pruned ones too) and their durations summed (read from its storage; with several workers more
    # than the wall time), a training's epochs and its time
    finished: int
    parent_run_id: str
    seconds: float = 0.0
    plots: list[str] = field(default_factory=list)


@dataclass
class PipelineResult:
    name: str
    stages: list[StageOutcome]
    report: list[ReportRow]  # the ReLU baseline once, then the best trial(s) of each reported stage
    profile_path: str | None  # the last stage's best profile, exported (None for a Pareto front)
    tracking_uri: str  # redacted
    objective_names: list[str]
    # how the report's intervals and tests were made, and which profile each stage's vs_global is against
    evidence: dict[str, Any] = field(default_factory=dict)
    directions: dict[str, str] = field(default_factory=dict)  # objective -> maximize/minimize (default maximize)

    @property
    def reported_objectives(self) -> list[str]:
        """What the report scored on test: the optimised objectives, then any other (a constrained one)."""
        return list(dict.fromkeys([*self.objective_names, *(name for row in self.report for name in row.test)]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.name,
            "stages": [stage.__dict__ for stage in self.stages],
            "report": [row.to_dict() for row in self.report],
            **self.evidence,
            "directions": self.directions,
            "profile": self.profile_path,
            "tracking_uri": self.tracking_uri,
        }
