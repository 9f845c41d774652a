"""Pipelines: several studies (and trained-CT stages) run in order on one model, data and stores, each
stage starting from an earlier one's result, then one test-split report over the chosen stages.

``run_pipeline`` runs a pipeline file (``pipelines/``) or mapping, resumably (``_run``); ``PipelineSpec``
is its validated form (``_spec``); warm starts map an earlier stage's best profiles onto a stage's units
(``_warm``); the report compares every stage with one ReLU baseline and one best global profile on the
same test samples (``_report``); the quickstart is a pipeline too (``_quickstart``). ``seeds`` runs the
pipeline once per seed and reports each profile's gain over ReLU over the seeds (``_replicates``,
``_combined``).
"""

from ct_tune.pipelines._combined import ReplicateRow, SeedValue
from ct_tune.pipelines._quickstart import QUICKSTART_CHECKPOINT, checked_quickstart, quickstart_pipeline, run_quickstart
from ct_tune.pipelines._replicates import ReplicateResult, parse_seeds, seed_pipeline
from ct_tune.pipelines._result import PipelineResult, StageOutcome
from ct_tune.pipelines._run import delete_pipeline_studies, run_pipeline
from ct_tune.pipelines._spec import PipelineSpec, load_pipeline, pipeline_from_dict, stage_spec, with_trials
from ct_tune.pipelines._warm import map_profile, warm_start_ranges

__all__ = [
    "QUICKSTART_CHECKPOINT",
    "PipelineResult",
    "PipelineSpec",
    "ReplicateResult",
    "ReplicateRow",
    "SeedValue",
    "StageOutcome",
    "checked_quickstart",
    "delete_pipeline_studies",
    "load_pipeline",
    "map_profile",
    "parse_seeds",
    "pipeline_from_dict",
    "quickstart_pipeline",
    "run_pipeline",
    "run_quickstart",
    "seed_pipeline",
    "stage_spec",
    "warm_start_ranges",
    "with_trials",
]
