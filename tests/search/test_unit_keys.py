"""Unit names MLflow cannot take as keys (a ModuleDict key with '@' or '+', a module path past 250
characters) get valid, unique, stable keys; the study says the mapping on its parent run; names too long
for Optuna are refused at create in one line."""

from __future__ import annotations

import json
from pathlib import Path

from ct_tune import InputError
from ct_tune.search._record import unit_keys
from ct_tune.tracking import mlflow_key

import pytest
from mlflow.utils.validation import _validate_metric_name, _validate_param_name
from torch import nn

from tests._fresh import tiny_study

LONG = "stage_" + "deep" * 70  # 286 characters: one attribute name, so the module path is longer still


class OddNames(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.heads = nn.ModuleDict({"a@b": nn.ReLU(), "x+y": nn.ReLU()})
        setattr(self, LONG, nn.ReLU())
        self.fc = nn.Linear(4 * 64, 10)

    def forward(self, x):
        h = self.conv(x)
        h = self.heads["a@b"](h) + self.heads["x+y"](-h)
        return self.fc(getattr(self, LONG)(h).flatten(1))


def test_odd_unit_names_are_logged_under_valid_keys_and_the_mapping_is_on_the_parent_run(tmp_path):
    study = tiny_study(
        tmp_path,
        None,
        model={"class_path": f"{__name__}.OddNames"},
        search={"granularity": "site", "enqueue_baseline": True},
        budget={"n_trials": 2},
    )
    assert set(study.units) == {"heads.a@b#0", "heads.x+y#0", f"{LONG}#0"}
    study.run(progress=False)
    assert study.counts()["COMPLETE"] == 2
    client = study.tracker.client
    mapping = json.loads(
        Path(client.download_artifacts(study.parent_run_id, "unit_keys.json", str(tmp_path))).read_text()
    )
    assert set(mapping) == set(study.units)  # every one of them needed a new key
    runs = client.search_runs([study.experiment_id], "tags.`ct_tune.state` = 'COMPLETE'")
    assert len(runs) == 2
    for run in runs:
        assert set(mapping.values()) <= set(run.data.params)
        for key in run.data.params:
            _validate_param_name(key)  # MLflow's own checks
            assert len(key) <= 250
    assert len(set(mapping.values())) == 3


@pytest.mark.parametrize("name", ["beta.00.heads.a@b", "beta.01.x+y", "beta.02." + LONG, "beta.03.a/../b", "beta.04.é"])
def test_every_key_passes_mlflows_checks_and_is_stable(name):
    key = mlflow_key(name)
    _validate_param_name(key)
    _validate_metric_name(key)
    assert len(key) <= 250 and key == mlflow_key(name) and key != mlflow_key(name + "x")


def test_plain_names_keep_their_keys_and_names_too_long_for_optuna_are_refused():
    assert unit_keys(["layer1.relu", "layer2.relu", "f.relu()#1"]) == {"f.relu()#1": "beta.02.f.relu_inline-1"}
    both = unit_keys(["f.relu()", "f.relu_inline"])  # the index in each key keeps them apart
    assert both == {"f.relu()": "beta.00.f.relu_inline"}
    with pytest.raises(InputError, match="longer than Optuna stores"):
        unit_keys(["m" * 600])
