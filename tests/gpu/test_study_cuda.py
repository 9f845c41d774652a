"""A tiny study on cuda:0 through the real CLI: every trial scored on the GPU, its peak GPU memory logged, the
ReLU baseline as on the CPU."""

from __future__ import annotations

import pytest

from tests.conftest import write_spec
from tests.helpers import mlflow_runs, plain_val_hits

pytestmark = pytest.mark.gpu


def test_a_tiny_study_runs_on_cuda(cli, tmp_path, digits_checkpoint):
    run = {"device": "cuda:0", "batch_size": 128}
    write_spec(tmp_path / "spec.yaml", digits_checkpoint, budget={"n_trials": 3}, run=run)
    created = cli("study", "create", "spec.yaml", "--name", "on-gpu")
    assert created.returncode == 0, created.stderr
    ran = cli("study", "run", "on-gpu", "--devices", "cuda:0", "--no-progress", "--json")
    assert ran.returncode == 0, ran.stderr
    assert "on cuda" in ran.stderr, ran.stderr  # "worker 0 on cuda:0 (<the GPU's name>)"
    _, children = mlflow_runs(tmp_path, "on-gpu")
    assert len(children) == 3 and {run.info.status for run in children} == {"FINISHED"}
    assert all(run.data.metrics.get("gpu_peak_mb", 0) > 0 for run in children)
    baseline = [run for run in children if run.data.tags.get("ct_tune.kind") == "baseline"]
    hits, total = plain_val_hits(digits_checkpoint, 128)
    assert len(baseline) == 1
    assert abs(baseline[0].data.metrics["accuracy"] - hits / total) <= 2 / total  # TF32 convolutions on the GPU
