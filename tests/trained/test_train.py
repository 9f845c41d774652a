"""Trained CT (``train_ct``, ``ct-tune train-ct``): betas and c learned by gradient, kept in range, exported
as a profile that reproduces its val score on a fresh model, logged to MLflow."""

from __future__ import annotations

import json

from ct_tune import InputError
from ct_tune.bench import Bench, evaluate_profile
from ct_tune.steering import BetaProfile
from ct_tune.trained import BETA_HIGH, BETA_LOW, TrainCTSettings, TrainCTSpec, train_ct
from ct_tune.trained._loop import _TrainableUnit

import pytest
import torch
import yaml
from torch import nn

TRANSFER_DATA = {"name": "mnist5k", "seed": 0, "train_size": 500}


def test_reparametrisation_keeps_beta_and_c_in_range_with_finite_gradients():
    theta = nn.Parameter(torch.tensor([-1e4, -30.0, 0.0, 30.0, 1e4]))
    phi = nn.Parameter(torch.tensor([-1e4, -30.0, 0.0, 30.0, 1e4]))
    unit = _TrainableUnit("u", theta, phi)
    beta, c = unit.values()
    assert bool((beta >= BETA_LOW).all() and (beta <= BETA_HIGH).all() and (beta < 1).all())
    assert bool((c >= 0).all() and (c <= 1).all())
    x = torch.randn(4, 5, 3, 3, generator=torch.Generator().manual_seed(0)) * 100
    out = unit(x)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(theta.grad).all() and torch.isfinite(phi.grad).all()
    assert theta.grad[2] != 0  # the middle of the range learns
    frozen = unit.frozen()
    assert torch.equal(frozen(x), out.detach())  # what the profile holds is what training ran


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"lr": 0}, r"train\.lr: got 0; input should be greater than 0"),
        ({"lr": -0.1}, r"train\.lr: got -0\.1"),
        ({"lr": float("inf")}, r"train\.lr: got inf; input should be a finite number"),
        ({"epochs": 0}, r"train\.epochs: got 0; input should be greater than or equal to 1"),
        ({"granularity": "layer"}, r"train\.granularity: got 'layer'"),
        ({"init_beta": 1.0}, r"train\.init_beta: got 1\.0"),
        ({"epoch": 3}, r"unknown field 'train\.epoch'"),
    ],
)
def test_bad_settings_are_one_line_errors(train, message):
    with pytest.raises(InputError, match=message):
        TrainCTSpec.from_dict({"model": {"name": "cifar_resnet_small"}, "train": train})


def test_bad_spec_sections_are_one_line_errors():
    model = {"name": "cifar_resnet_small"}
    with pytest.raises(InputError, match=r"trains on the probe \(transfer\) or accuracy objective, not 'adversarial'"):
        TrainCTSpec.from_dict({"model": model, "objective": {"name": "adversarial"}})
    with pytest.raises(InputError, match="unknown section 'search'"):
        TrainCTSpec.from_dict({"model": model, "search": {}})
    with pytest.raises(InputError, match="model: required section is missing"):
        TrainCTSpec.from_dict({"train": {}})
    with pytest.raises(InputError, match="one objective"):
        TrainCTSpec.from_dict({"model": model, "objectives": ["probe", "accuracy"]})
    spec = TrainCTSpec.from_dict({"model": model, "train": {"epochs": 3}}, overrides={"epochs": 5, "lr": None})
    assert spec.settings.epochs == 5 and spec.settings.lr == 0.1 and spec.objective == "probe"
    assert TrainCTSettings() == TrainCTSettings(
        granularity="channel", lr=0.1, head_lr=1e-3, init_beta=0.8, init_c=0.5, epochs=20, lr_step=10, batch_size=32
    )


@pytest.mark.slow
def test_train_ct_command_beats_relu_on_transfer_reproduces_and_logs(tmp_path, digits_checkpoint, cli_fast):
    """The offline transfer task (digits-pretrained ResNet, linear probe on MNIST): trained per-channel CT
    scores at least the ReLU baseline on val; its profile applied to a fresh model scores exactly that."""
    spec = {
        "name": "trained-test",
        "model": {"checkpoint": str(digits_checkpoint)},
        "data": TRANSFER_DATA,
        "objective": "probe",
        "run": {"device": "cpu", "batch_size": 512},
        "train": {"epochs": 3, "lr_step": 2, "head_lr": 0.01, "batch_size": 64},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = cli_fast("train-ct", "spec.yaml", "--out", "trained.json", "--tracking-uri", uri, "--json")
    assert result.returncode == 0, result.stderr
    payload = result.json()
    assert payload["value"] >= payload["baseline"], payload
    assert payload["granularity"] == "channel" and 1 <= payload["best_epoch"] <= 3 and len(payload["history"]) == 3
    for row in payload["history"]:
        assert BETA_LOW <= row["beta_min"] <= row["beta_max"] <= BETA_HIGH and 0 <= row["c_mean"] <= 1
    profile = BetaProfile.load(tmp_path / "trained.json")
    assert profile.granularity == "channel" and profile.metadata["val"] == payload["value"]
    values = [v for entry in profile.channels.values() for v in entry["beta"]]
    assert len(values) == payload["parameters"] // 2 and all(0 < v < 1 for v in values)
    assert len(set(values)) > len(profile.channels)  # betas differ within units: trained per channel

    again = evaluate_profile(
        model=spec["model"], data=TRANSFER_DATA, profile=profile, objectives=["probe"], run=spec["run"]
    )
    assert again["results"]["probe"]["value"] == payload["value"]  # exactly, not approximately

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    run = client.get_run(payload["mlflow"]["run_id"])
    assert run.data.tags["ct_tune.strategy"] == "trained" and run.data.params["granularity"] == "channel"
    assert run.data.metrics["probe"] == payload["value"] and run.data.metrics["baseline"] == payload["baseline"]
    curve = client.get_metric_history(run.info.run_id, "val")
    assert [m.step for m in curve] == [1, 2, 3] and [m.value for m in curve] == [r["val"] for r in payload["history"]]
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 3
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"profile.json", "beta_distribution.png"} <= artifacts


@pytest.mark.slow
def test_block_granularity_on_accuracy_stays_in_range_under_a_huge_learning_rate(digits_checkpoint):
    """The model's own classifier as the head (frozen with the backbone); lr 50 drives the logits far out,
    and beta and c stay in range anyway: the range is the reparametrisation's, not a clamp's."""
    data, run = {"name": "digits", "seed": 0}, {"device": "cpu"}
    trained = train_ct(
        model={"checkpoint": str(digits_checkpoint)},
        data=data,
        objective="accuracy",
        run=run,
        settings={"granularity": "block", "epochs": 1, "lr": 50.0, "batch_size": 256, "init_c": 0.3},
    )
    profile = trained.profile
    assert profile.granularity == "block" and trained.units == 4 and trained.parameters == 8
    for entry in profile.channels.values():
        assert len(entry["beta"]) == 1 and BETA_LOW <= entry["beta"][0] <= BETA_HIGH and 0 <= entry["c"][0] <= 1
    assert all(entry["c"][0] != pytest.approx(0.3) for entry in profile.channels.values())  # c trained too
    again = evaluate_profile(model={"checkpoint": str(digits_checkpoint)}, data=data, profile=profile, run=run)
    assert again["results"]["accuracy"]["value"] == trained.value
    assert json.loads(json.dumps(trained.to_dict()))["settings"]["lr"] == 50.0


@pytest.mark.slow
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, digits_checkpoint, cli_fast):
    spec = {"model": {"checkpoint": str(digits_checkpoint)}, "data": {"name": "digits"}, "train": {"epochs": 0}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    for args, message in (
        ((), "train.epochs: got 0"),
        (("--epochs", "1", "--lr", "0"), "train.lr: got 0.0; input should be greater than 0"),
        (("--epochs", "1", "--lr", "-1"), "train.lr: got -1.0"),
    ):
        result = cli_fast("train-ct", "spec.yaml", "--out", "p.json", "--no-mlflow", *args)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert not (tmp_path / "p.json").exists() and result.stdout == ""
    foreign = BetaProfile(
        granularity="channel",
        betas={"relu#0": 0.85},
        channels={"relu#0": {"beta": [0.9, 0.8], "c": [0.5, 0.5]}},
        fingerprint="0123456789abcdef",
        model="VGG",
    )
    foreign.save(tmp_path / "foreign.json")
    result = cli_fast("evaluate", "--checkpoint", str(digits_checkpoint), "--profile", "foreign.json")
    assert result.returncode == 2 and "found on a model with other ReLU calls (VGG)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_shipped_spec_is_valid_and_uses_the_authors_settings():
    from tests.conftest import SOURCE_ROOT

    spec = TrainCTSpec.load(SOURCE_ROOT / "trained" / "digits-to-mnist5k.yaml")
    assert spec.settings == TrainCTSettings() and spec.objective == "probe" and spec.bench.data.name == "mnist5k"


def trained_pipeline(checkpoint, **changes) -> dict:
    data = {
        "name": "tpipe",
        "base": {
            "model": {"checkpoint": str(checkpoint)},
            "data": {"name": "digits", "seed": 0},
            "objectives": [{"name": "accuracy"}],
            "run": {"device": "cpu", "batch_size": 256},
        },
        "stages": [
            {"name": "trained", "kind": "train", "train": {"granularity": "channel", "epochs": 1, "batch_size": 256}},
            {
                "name": "block",
                "warm_start": {"from": "trained", "width": 0.05},
                "search": {"granularity": "block"},
                "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 1},
                "budget": {"n_trials": 2},
            },
        ],
    }
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ({"name": "t", "kind": "train", "budget": {"n_trials": 2}}, "stage 't' is of kind train: budget belongs"),
        ({"name": "t", "train": {"epochs": 2}}, "train: belongs to a stage of kind train"),
        ({"name": "t", "kind": "train", "train": {"epochs": 0}}, r"stage 't': train\.epochs: got 0"),
        ({"name": "t", "kind": "train", "train": {"lr": -1}}, r"train\.lr: got -1"),
    ],
)
def test_bad_train_stages_are_one_line_errors(stage, message):
    from ct_tune.pipelines import pipeline_from_dict

    with pytest.raises(InputError, match=message):
        pipeline_from_dict(trained_pipeline("model.pt", stages=[stage]))


@pytest.mark.slow
def test_pipeline_trains_then_searches_around_the_trained_profile_and_resumes(tmp_path, digits_checkpoint):
    import ct_tune
    from ct_tune.pipelines import map_profile, run_pipeline

    stores = {
        "storage": f"sqlite:///{tmp_path}/optuna.db",
        "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
        "profile_dir": tmp_path / "profiles",
        "progress": False,
        "say": lambda _text: None,
    }
    result = run_pipeline(trained_pipeline(digits_checkpoint), **stores)
    trained_outcome, block_outcome = result.stages
    assert block_outcome.finished == 2 and block_outcome.granularity == "block"
    assert trained_outcome.stopped == "trained" and trained_outcome.granularity == "trained channel"
    profile = BetaProfile.load(tmp_path / "profiles" / "tpipe.trained.json")
    assert profile.granularity == "channel" and profile.metadata["pipeline_stage"] == "tpipe.trained"

    study = ct_tune.load_study("tpipe.block", storage=stores["storage"], tracking_uri=stores["tracking_uri"])
    first = min(study.optuna_study.trials, key=lambda t: t.number)
    assert first.user_attrs["ct_tune.kind"] == "warm-start"
    with Bench.open(study.spec, **study.spec.grouping, device="cpu", steer=False) as bench:
        expected = map_profile(bench.model.net, bench.trace, profile.betas, "site", "block")
    assert study.trial(first.number).betas == pytest.approx(expected)  # block values: means of channel means
    assert expected != pytest.approx(dict.fromkeys(expected, next(iter(expected.values()))))  # not uniform

    trained_row = next(row for row in result.report if row.stage == "trained")
    assert trained_row.val["accuracy"] == profile.metadata["val"] and 0 < trained_row.test["accuracy"] <= 1
    assert {row.stage for row in result.report} == {"trained", "block"}

    from mlflow import MlflowClient

    run = MlflowClient(stores["tracking_uri"]).get_run(trained_outcome.parent_run_id)
    assert run.data.tags["ct_tune.stage"] == "trained" and run.data.tags["ct_tune.pipeline"] == "tpipe"

    again = run_pipeline(trained_pipeline(digits_checkpoint), **stores)  # resumes: nothing is trained again
    assert again.stages[0].stopped == "trained earlier" and again.stages[0].parent_run_id == run.info.run_id


def test_bad_tune_sections_are_one_line_errors():
    model = {"name": "cifar_resnet_small"}
    with pytest.raises(InputError, match=r"tune\.lr: low must be below high; got 0\.5 and 0\.1"):
        TrainCTSpec.from_dict({"model": model, "tune": {"lr": {"low": 0.5, "high": 0.1}}})
    with pytest.raises(InputError, match=r"unknown field 'tune\.batch'"):
        TrainCTSpec.from_dict({"model": model, "tune": {"batch": {"low": 1, "high": 2}}})
    with pytest.raises(InputError, match=r"tune\.n_trials: got 0"):
        TrainCTSpec.from_dict({"model": model, "tune": {"n_trials": 0}})


@pytest.mark.slow
def test_tune_searches_the_training_settings_as_a_resumable_study(tmp_path, digits_checkpoint):
    from ct_tune.trained import tune_train_ct

    import optuna
    from mlflow import MlflowClient

    spec = TrainCTSpec.from_dict(
        {
            "name": "tuned",
            "model": {"checkpoint": str(digits_checkpoint)},
            "data": {"name": "digits", "seed": 0},
            "objective": "accuracy",
            "train": {"epochs": 1, "batch_size": 256},
            "tune": {"n_trials": 2, "lr": {"low": 0.01, "high": 1.0, "log": True}, "granularity": ["global", "block"]},
        }
    )
    stores = {"storage": f"sqlite:///{tmp_path}/optuna.db", "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}
    payload = tune_train_ct(spec, out=tmp_path / "tuned.json", **stores)
    assert len(payload["trials"]) == 2 and set(payload["best"]["params"]) == {"lr", "granularity"}
    assert all(0.01 <= t["params"]["lr"] <= 1.0 for t in payload["trials"])
    profile = BetaProfile.load(tmp_path / "tuned.json")
    assert profile.granularity == payload["best"]["params"]["granularity"]
    assert profile.metadata["val"] == payload["best"]["value"]
    study = optuna.load_study(study_name="tuned.tune", storage=stores["storage"])
    runs = {t.user_attrs["mlflow_run_id"] for t in study.trials}
    client = MlflowClient(stores["tracking_uri"])
    assert {client.get_run(r).data.tags["optuna.study_name"] for r in runs} == {"tuned.tune"}
    again = tune_train_ct(spec, **stores)  # the study holds its trials already: nothing runs again
    assert (
        again["trials"] == payload["trials"]
        and len(optuna.load_study(study_name="tuned.tune", storage=stores["storage"]).trials) == 2
    )


def test_cli_tune_without_a_tune_section_and_a_missing_spec_are_exit_2(tmp_path, cli_fast):
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({"model": {"name": "cifar_resnet_small"}}))
    result = cli_fast("train-ct", "spec.yaml", "--tune", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db")
    assert result.returncode == 2 and "the spec has no tune: section" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "mlflow.db").exists()
    result = cli_fast("train-ct", "nope.yaml")
    assert result.returncode == 2 and "train-ct spec nope.yaml does not exist" in result.stderr
