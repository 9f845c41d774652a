"""Pipelines: several studies (and trained-CT stages) run in order on one model, data and stores, each
stage starting from an earlier one's result, then one test-split report over the chosen stages.

``run_pipeline`` runs a pipeline file (``pipelines/``) or mapping, resumably (``_run``); ``PipelineSpec``
is its validated form (``_spec``); warm starts map an earlier stage's best profiles onto a stage's units
(``_warm``); the report compares every stage with one ReLU baseline and one best global profile on the
same test samples (``_report``); the quickstart is a pipeline too (``_quickstart``).
"""

from ct_tune.pipelines._quickstart import QUICKSTART_CHECKPOINT, checked_quickstart, quickstart_pipeline, run_quickstart
from ct_tune.pipelines._run import PipelineResult, StageOutcome, delete_pipeline_studies, run_pipeline
from ct_tune.pipelines._spec import PipelineSpec, load_pipeline, pipeline_from_dict
from ct_tune.pipelines._warm import map_profile, warm_start_ranges

__all__ = [
    "QUICKSTART_CHECKPOINT",
    "PipelineResult",
    "PipelineSpec",
    "StageOutcome",
    "checked_quickstart",
    "delete_pipeline_studies",
    "load_pipeline",
    "map_profile",
    "pipeline_from_dict",
    "quickstart_pipeline",
    "run_pipeline",
    "run_quickstart",
    "warm_start_ranges",
]
