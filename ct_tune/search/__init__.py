"""Searching betas: study specs, the ``Study`` object, the trial loop, pipelines and the final report.

``create_study`` / ``load_study`` give a :class:`Study` (Optuna's storage is its truth, MLflow follows);
``Study.run`` runs trials in this process or in worker processes (``python -m ct_tune.search.worker``);
``run_pipeline`` runs several studies in order; ``train_ct`` trains CT's betas by gradient instead;
``Study.report`` is the only reader of the test split (``bootstrap_mean`` / ``compare`` / ``mcnemar`` are
the statistics it reports with).
Every ``ct-tune study`` / ``pipeline`` / ``quickstart`` / ``evaluate`` / ``units`` command is one call here.
"""

from ct_tune.search._bench import Bench
from ct_tune.search._evaluate import evaluate_profile, model_units
from ct_tune.search._evidence import bootstrap_mean, compare, mcnemar
from ct_tune.search._pipeline import PipelineResult, StageOutcome, delete_pipeline_studies, run_pipeline
from ct_tune.search._pipeline_spec import PipelineSpec, load_pipeline, pipeline_from_dict
from ct_tune.search._quickstart import QUICKSTART_CHECKPOINT, checked_quickstart, quickstart_pipeline, run_quickstart
from ct_tune.search._report import Reference, StudyReport
from ct_tune.search._run import RunOptions, RunSummary
from ct_tune.search._spec import StudySpec, load_spec, paper_grid, parse_duration, spec_from_dict
from ct_tune.search._study import (
    Study,
    StudyStatus,
    TrialResult,
    create_study,
    delete_study,
    list_studies,
    load_study,
)
from ct_tune.search._trained import (
    TrainCTSettings,
    TrainCTSpec,
    TrainedCT,
    log_trained_ct,
    run_train_ct,
    train_ct,
    tune_train_ct,
)

__all__ = [
    "QUICKSTART_CHECKPOINT",
    "Bench",
    "PipelineResult",
    "PipelineSpec",
    "Reference",
    "RunOptions",
    "RunSummary",
    "StageOutcome",
    "Study",
    "StudyReport",
    "StudySpec",
    "StudyStatus",
    "TrainCTSettings",
    "TrainCTSpec",
    "TrainedCT",
    "TrialResult",
    "bootstrap_mean",
    "checked_quickstart",
    "compare",
    "create_study",
    "delete_pipeline_studies",
    "delete_study",
    "evaluate_profile",
    "list_studies",
    "load_pipeline",
    "load_spec",
    "load_study",
    "log_trained_ct",
    "mcnemar",
    "model_units",
    "paper_grid",
    "parse_duration",
    "pipeline_from_dict",
    "quickstart_pipeline",
    "run_pipeline",
    "run_quickstart",
    "run_train_ct",
    "spec_from_dict",
    "train_ct",
    "tune_train_ct",
]
