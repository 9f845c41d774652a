"""Runs carry the data their numbers came from as MLflow datasets, on a real MLflow SQL store: the val split on a
study's parent and trial runs, the test split on the runs a report scored; the digest is the split's fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

from ct_tune.data import ComponentSpec, UserData, create_datamodule
from ct_tune.tracking import Tracker, split_datasets

import pytest
import torch
from torch.utils.data import Dataset

from tests._fresh import fresh_sqlite, tiny_study
from tests.helpers import digits_tensors


class TinyDigits(Dataset):
    """60 real digits; ``token`` stands for a credential a user's data class may be built with."""

    def __init__(self, token: str, offset: int = 0) -> None:
        _, _, x, y = digits_tensors()
        self.x, self.y = x[offset : offset + 60], y[offset : offset + 60]

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.x[index], int(self.y[index])


def inputs_of(tracker: Tracker, run_id: str) -> dict[str, dict]:
    """The run's datasets by name: digest, context, source type, source and profile as MLflow stored them."""
    found = {}
    for item in tracker.client.get_run(run_id).inputs.dataset_inputs:
        dataset = item.dataset
        found[dataset.name] = {
            "digest": dataset.digest,
            "context": {tag.key: tag.value for tag in item.tags}.get("mlflow.data.context"),
            "source_type": dataset.source_type,
            "source": json.loads(dataset.source),
            "profile": json.loads(dataset.profile),
        }
    return found


def test_a_builtin_splits_digest_changes_with_that_split_only():
    base = create_datamodule("digits", seed=0, cache=False)
    other_seed = create_datamodule("digits", seed=1, cache=False)
    smaller_test = create_datamodule("digits", seed=0, test_size=50, cache=False)
    digests = {
        label: {d.split: d.digest for d in split_datasets(module.describe(), ["val", "test"])}
        for label, module in [("base", base), ("seed", other_seed), ("test", smaller_test)]
    }
    assert digests["base"]["val"] != digests["seed"]["val"]  # another split seed: other val samples
    assert digests["base"]["val"] == digests["test"]["val"]  # the same val, whatever the test split is
    assert digests["base"]["test"] != digests["test"]["test"]
    assert base.fingerprint != smaller_test.fingerprint  # the study's identity still covers every split
    assert all(len(d) == 16 for split in digests.values() for d in split.values())  # MLflow takes 36


def test_parent_and_trial_runs_carry_the_val_split_and_mlflow_filters_on_it(tmp_path):
    tracker = Tracker(fresh_sqlite("mlflow", tmp_path / "mlruns"))
    module = create_datamodule("digits", seed=0, cache=False)
    val = split_datasets(module.describe(), ["val"])
    experiment = tracker.experiment_id("s", create=True)
    parent = tracker.create_study_run(experiment, "s", {}, {}, datasets=val)
    trial = tracker.start_trial_run(
        experiment, parent, study_name="s", trial_number=0, params={}, tags={}, datasets=val
    )
    bare = tracker.start_trial_run(experiment, parent, study_name="s", trial_number=1, params={}, tags={})

    expected = {
        "digest": module.split_fingerprint("val"),
        "context": "validation",
        "source_type": "code",  # digits come from scikit-learn, not from a folder
        "source": {"tags": {"origin": "scikit-learn load_digits()"}},
        "profile": {"rows": module.sizes()["val"], "sample_shape": [1, 8, 8], "classes": 10},
    }
    assert inputs_of(tracker, parent) == inputs_of(tracker, trial) == {"digits-val": expected}
    assert inputs_of(tracker, bare) == {}
    tracker.log_datasets(trial, val)  # logged again: still one
    assert len(tracker.client.get_run(trial).inputs.dataset_inputs) == 1
    matched = tracker.runs(experiment, f"dataset.digest = '{expected['digest']}' and dataset.context = 'validation'")
    assert {run.info.run_id for run in matched} == {parent, trial}


def test_user_data_is_named_by_its_class_and_its_arguments_are_left_out(tmp_path):
    components = {
        split: ComponentSpec(f"{__name__}.TinyDigits", {"token": "s3cr3t-token", "offset": offset})
        for split, offset in (("val", 0), ("test", 100))
    }
    data = UserData.from_datasets(components)
    data.samples("val")
    assert [d.split for d in split_datasets(data.describe(), ["val", "test"])] == ["val"]  # test: not read yet
    data.samples("test")
    found = split_datasets(data.describe(), ["val", "test"])
    assert [(d.name, d.digest) for d in found] == [
        (f"{__name__}.TinyDigits-val", data.fingerprints["val"]),
        (f"{__name__}.TinyDigits-test", data.fingerprints["test"]),
    ]
    tracker = Tracker(fresh_sqlite("mlflow", tmp_path / "mlruns"))
    run = tracker.create_study_run(tracker.experiment_id("u", create=True), "u", {}, {}, datasets=found)
    stored = inputs_of(tracker, run)
    assert stored[f"{__name__}.TinyDigits-test"]["context"] == "test"
    assert stored[f"{__name__}.TinyDigits-val"]["profile"] == {"rows": 60, "sample_shape": [1, 8, 8], "classes": 10}
    assert "s3cr3t" not in json.dumps(stored)


@pytest.mark.slow
def test_a_study_and_its_report_carry_their_splits_and_two_split_seeds_differ(tmp_path: Path):
    model = {"class_path": "tests.helpers.DigitsCNN"}
    sections = {"model": model, "budget": {"n_trials": 3}}
    study = tiny_study(tmp_path / "a", None, name="seed0", **sections)
    study.run(progress=False)
    val = study.meta["data"]["fingerprints"]["val"]
    tracker = study.tracker
    trial_runs = [t.mlflow_run_id for t in study.trials()]
    assert len(trial_runs) == 3
    for run_id in [study.parent_run_id, *trial_runs]:
        assert inputs_of(tracker, run_id).keys() == {"digits-val"}
        assert inputs_of(tracker, run_id)["digits-val"]["digest"] == val

    report = study.report()  # the best trial and the ReLU baseline: not all three trials
    reported = {study.trial(row.number).mlflow_run_id for row in report.trials}
    test = inputs_of(tracker, study.parent_run_id)["digits-test"]
    assert test["context"] == "test" and test["profile"]["rows"] == report.test_samples
    assert all(inputs_of(tracker, run_id)["digits-test"] == test for run_id in reported)
    unreported = [r for r in trial_runs if r not in reported]
    assert unreported and all(inputs_of(tracker, r).keys() == {"digits-val"} for r in unreported)

    other = tiny_study(tmp_path / "b", None, name="seed1", data={"name": "digits", "seed": 1}, **sections)
    other_val = inputs_of(other.tracker, other.parent_run_id)["digits-val"]["digest"]
    assert other_val == other.meta["data"]["fingerprints"]["val"] != val
