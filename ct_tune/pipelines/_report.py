"""A pipeline's report: the chosen stages' best profiles scored once on the test split, in one table.

The first global stage is reported first: its best profile is the best global profile every later stage
(trained ones too) is compared with on the same test samples, as its ReLU baseline is for stages without
one. The table holds the ReLU baseline once, then each reported stage's best trial(s) or trained profile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ct_tune.evidence import BASELINE, CHOSEN, Reference, ReportRow, score_row
from ct_tune.pipelines._spec import PipelineSpec
from ct_tune.search import Study, StudyReport
from ct_tune.steering import BetaProfile
from ct_tune.trained import TrainCTSpec, score_trained_on_test

__all__ = ["PipelineReport", "report_pipeline"]


@dataclass
class PipelineReport:
    rows: list[ReportRow]  # the ReLU baseline once, then the best trial(s) of each reported stage
    # how the intervals and tests were made, and which profile each stage's vs_global is against
    evidence: dict[str, Any] = field(default_factory=dict)


def report_pipeline(
    spec: PipelineSpec,
    studies: Mapping[str, Study],
    trained: Mapping[str, BetaProfile],
    trainings: Mapping[str, TrainCTSpec],
) -> PipelineReport:
    """Score the reported stages on the test split (each study's own report, a trained stage's profile)."""
    reports, best_global, relu = _report_studies(spec, studies)
    rows: list[ReportRow] = []
    baseline_row = None
    for stage in spec.report_stages:
        if stage in trained:
            rows.append(_trained_row(stage, trainings[stage], trained[stage], best_global, relu))
            continue
        granularity = studies[stage].spec.search.granularity
        for row in reports[stage].trials:
            if row.role == CHOSEN:
                rows.append(row.in_stage(stage, granularity))
            elif row.role == BASELINE and baseline_row is None:  # the ReLU baseline once, first in the table
                baseline_row = row.in_stage(stage, granularity)
    searched = [name for name in spec.report_stages if name in reports]
    first = reports[searched[0]] if searched else None
    evidence = {
        "evidence": first.evidence if first else {},
        "global_reference": {name: reports[name].global_reference for name in searched},
    }
    return PipelineReport(([baseline_row] if baseline_row else []) + rows, evidence)


def _report_studies(
    spec: PipelineSpec, studies: Mapping[str, Study]
) -> tuple[dict[str, StudyReport], Reference | None, Reference | None]:
    """Each reported search stage's report, with the best global profile and the ReLU baseline the later
    stages are compared with."""
    names = [name for name in spec.report_stages if name in studies]
    glob = next((name for name in names if studies[name].spec.search.granularity == "global"), None)
    reports: dict[str, StudyReport] = {}
    best_global = relu = None
    for name in ([glob] if glob else []) + [name for name in names if name != glob]:
        reports[name] = studies[name].report(best_global=best_global, relu=relu)
        if name == glob:
            best_global = reports[name].reference(f"best of stage {name}")
        relu = relu or reports[name].reference(f"ReLU baseline of stage {name}", role=BASELINE)
    return reports, best_global, relu


def _trained_row(
    stage: str, training: TrainCTSpec, profile: BetaProfile, best_global: Reference | None, relu: Reference | None
) -> ReportRow:
    """A trained stage's row: its val score and, once, its test score with its interval and its paired
    comparisons with the pipeline's ReLU baseline and best global profile."""
    row = score_row(
        number=f"epoch {profile.metadata['best_epoch']}",
        role=CHOSEN,
        own=(stage, None),
        val={profile.metadata["objective"]: profile.metadata["val"]},
        scored=score_trained_on_test(training, profile),
        betas=profile.betas,
        c=profile.c,
        relu=relu,
        best_global=best_global,
    )
    return row.in_stage(stage, f"trained {training.settings.granularity}")
