"""Searching betas: one Optuna study (its spec, the ``Study`` object, launches, the trial loop, the report).

``create_study`` / ``load_study`` give a :class:`Study` (Optuna's storage is its truth, MLflow follows);
``Study.run`` runs trials in this process or in worker processes (``python -m ct_tune.search.worker``);
``Study.report`` is the only reader of the test split. Every ``ct-tune study`` command is one call here.

The bench a study scores on is ``ct_tune.bench``, the statistics of a report ``ct_tune.evidence``, trained CT
``ct_tune.trained`` and pipelines ``ct_tune.pipelines``; the names they had here before still resolve.
"""

import importlib
from typing import Any

from ct_tune.search._progress import TrialLine
from ct_tune.search._report import StudyReport
from ct_tune.search._run import RunOptions, RunSummary
from ct_tune.search._spec import (
    BetaRange,
    StudySpec,
    family_range,
    load_spec,
    paper_grid,
    parse_duration,
    spec_from_dict,
)
from ct_tune.search._study import (
    Study,
    StudyStatus,
    TrialResult,
    create_study,
    delete_study,
    list_studies,
    load_study,
    new_study,
    open_study,
    study_exists,
    study_to_delete,
)

__all__ = [
    "BetaRange",
    "RunOptions",
    "RunSummary",
    "Study",
    "StudyReport",
    "StudySpec",
    "StudyStatus",
    "TrialLine",
    "TrialResult",
    "create_study",
    "delete_study",
    "family_range",
    "list_studies",
    "load_spec",
    "load_study",
    "new_study",
    "open_study",
    "paper_grid",
    "parse_duration",
    "spec_from_dict",
    "study_exists",
    "study_to_delete",
]

# Names that lived here before each concept got its own package: resolved on first use (an import here
# would make ``search`` depend on the packages built on it), so ``ct_tune.search.train_ct`` keeps working.
_MOVED = {
    **dict.fromkeys(("Bench", "evaluate_profile", "model_units"), "ct_tune.bench"),
    **dict.fromkeys(("Reference", "bootstrap_mean", "compare", "mcnemar"), "ct_tune.evidence"),
    **dict.fromkeys(
        ("TrainCTSettings", "TrainCTSpec", "TrainedCT", "log_trained_ct", "run_train_ct", "train_ct", "tune_train_ct"),
        "ct_tune.trained",
    ),
    **dict.fromkeys(
        (
            "QUICKSTART_CHECKPOINT",
            "PipelineResult",
            "PipelineSpec",
            "StageOutcome",
            "checked_quickstart",
            "delete_pipeline_studies",
            "load_pipeline",
            "pipeline_from_dict",
            "quickstart_pipeline",
            "run_pipeline",
            "run_quickstart",
        ),
        "ct_tune.pipelines",
    ),
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'ct_tune.search' has no attribute {name!r}")
