"""The bench: what a process loads once to score beta profiles, and scoring outside a study.

``BenchSpec`` names a model, its data, the objectives and how to run (a study spec extends it); ``Bench.open``
loads them once (the model on its device, the splits, the ReLU sites grouped into units, the evaluators);
``evaluate_profile`` scores one profile on val and ``model_units`` lists a model's units, exactly as a study
with the same sections would.
"""

from ct_tune.bench._bench import Bench, prepare_data
from ct_tune.bench._evaluate import evaluate_profile, model_units
from ct_tune.bench._spec import BenchSpec, DataSpec, ModelSpec, RunSpec, bench_spec

__all__ = [
    "Bench",
    "BenchSpec",
    "DataSpec",
    "ModelSpec",
    "RunSpec",
    "bench_spec",
    "evaluate_profile",
    "model_units",
    "prepare_data",
]
