"""``ct-tune pretrain``: end to end through the CLI on digits, reproducibility, one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

from ct_tune.data import create_datamodule
from ct_tune.models import create_model, load_checkpoint, save_checkpoint
from ct_tune.training import PretrainConfig, evaluate, pretrain

import pytest
import torch

from tests._fakes import write_imagefolder


def _one_line_error(result, *fragments: str) -> str:
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ct-tune: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.slow
def test_pretrain_digits_through_the_cli_and_load_the_checkpoint_back(cli, tmp_path):
    args = ("--data", "digits", "--epochs", "4", "--out", "ck/digits.pt", "--accelerator", "cpu", "--json")
    result = cli("pretrain", *args)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)  # stdout holds exactly one JSON object
    assert {"checkpoint", "val_accuracy", "seconds"} <= set(payload)
    assert payload["checkpoint"] == "ck/digits.pt" and payload["sizes"] == {"train": 1079, "val": 359, "test": 359}
    assert payload["val_accuracy"] > 0.7 and payload["seconds"] > 0
    assert "epoch 4/4: train loss " in result.stderr  # one line per epoch on stderr (a pipe here, not a terminal)
    for noise in ("Tip:", "litlogger", "GPU available", "not found. Creating it", "Trainable params"):
        assert noise not in result.stderr  # Lightning's and MLflow's info lines, and a tip for a cloud product

    model = load_checkpoint(tmp_path / payload["checkpoint"])
    assert model.name == "cifar_resnet_small" and model.num_classes == 10
    dataset = model.metadata["dataset"]
    assert dataset["fingerprint"] == payload["fingerprint"]
    assert model.metadata["val_accuracy"] == payload["val_accuracy"]
    settings = dict(dataset["settings"])
    datamodule = create_datamodule(settings.pop("name"), input_spec=model.input_spec, **settings)
    assert datamodule.fingerprint == payload["fingerprint"]  # the same split, rebuilt from the checkpoint
    x, y = datamodule.tensors("val")
    assert evaluate(model, x, y) == payload["val_accuracy"]

    from mlflow import MlflowClient

    database = tmp_path / "mlruns" / "mlflow.db"
    assert database.is_file() and not list((tmp_path / "mlruns").rglob("meta.yaml"))  # SQL store, no file store
    run = MlflowClient(f"sqlite:///{database}").get_run(payload["mlflow_run_id"])
    assert run.data.metrics["val_accuracy"] == payload["val_accuracy"]
    assert run.data.tags["ct_tune.dataset_fingerprint"] == payload["fingerprint"]
    assert "val_acc" in run.data.metrics and run.data.params["lr"] == "0.1"


@pytest.mark.slow
def test_pretrain_is_reproducible_with_the_seed(tmp_path):
    def run(name: str) -> tuple[dict, dict]:
        config = PretrainConfig(
            data="digits",
            epochs=2,
            train_size=256,
            val_size=100,
            seed=7,
            accelerator="cpu",  # bit-identical runs: on CPU at a fixed thread count
            out=str(tmp_path / f"{name}.pt"),
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            progress=False,
        )
        payload = pretrain(config)
        return payload, torch.load(payload["checkpoint"], weights_only=True)["state_dict"]

    first, first_state = run("a")
    second, second_state = run("b")
    assert first["val_accuracy"] == second["val_accuracy"] and first["fingerprint"] == second["fingerprint"]
    assert first_state.keys() == second_state.keys()
    assert all(torch.equal(first_state[key], second_state[key]) for key in first_state)


@pytest.mark.slow
def test_pretrain_starts_from_a_weights_file(cli, tmp_path):
    start = create_model("cifar_resnet_small", num_classes=10, in_channels=1)
    torch.save(start.net.state_dict(), tmp_path / "start.pt")
    args = ("--checkpoint", "start.pt", "--epochs", "1", "--train-size", "100", "--val-size", "50", "--json", "-q")
    result = cli("pretrain", *args)
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(tmp_path / json.loads(result.stdout)["checkpoint"]).num_classes == 10


@pytest.mark.slow
def test_pretrain_a_gelu_network_through_the_cli(cli, tmp_path):
    args = ("--activation", "gelu", "--epochs", "1", "--train-size", "100", "--val-size", "50", "--json", "-q")
    result = cli("pretrain", *args)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["checkpoint"] == "checkpoints/cifar_resnet_small-gelu-digits-seed0.pt"
    model = load_checkpoint(tmp_path / payload["checkpoint"])
    assert isinstance(model.net.act, torch.nn.GELU) and model.model_kwargs == {"activation": "gelu"}
    assert model.metadata["training"]["activation"] == "gelu"


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.slow  # a fresh interpreter per case (8-21 s each under load)
@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--model", "resnet19"), ("unknown model 'resnet19'", "cifar_resnet_small", "resnet18", "vit_b_16")),
        (("--data", "cifar11"), ("unknown dataset 'cifar11'", "digits, mnist5k, cifar10")),
        (("--tracking-uri", "./mlruns"), ("MLflow's file store", "sqlite:///mlruns/mlflow.db")),
        (("--epochs", "0"), ("--epochs must be at least 1",)),
        (("--checkpoint", "nowhere.pt"), ("checkpoint file nowhere.pt not found",)),
    ],
)
def test_bad_names_fail_fast_with_one_line(cli, tmp_path, args, fragments):
    _one_line_error(cli("pretrain", *args), *fragments)
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.slow
def test_missing_dataset_says_where_it_looked_and_how_to_fix(cli, tmp_path):
    line = _one_line_error(cli("pretrain", "--data", "cifar10", "--data-dir", "empty"), "dataset cifar10 not found in")
    assert str(tmp_path / "empty") in line
    assert "--data-dir" in line and "CT_TUNE_DATA" in line and "--download" in line


@pytest.mark.slow
def test_checkpoints_with_a_mismatching_head_are_one_line(cli, tmp_path):
    write_imagefolder(tmp_path / "three", classes=3, per_class=10)
    ten = create_model("cifar_resnet_small", num_classes=10, in_channels=3)
    save_checkpoint(ten, tmp_path / "ten.pt", dataset={"name": "digits"})
    torch.save(ten.net.state_dict(), tmp_path / "ten-plain.pt")
    data = ("--data", "imagefolder", "--data-dir", "three")
    _one_line_error(cli("pretrain", "--model", "ten.pt", *data), "head for 10 classes (trained on digits)", "has 3")
    _one_line_error(
        cli("pretrain", "--model", "cifar_resnet_small", "--checkpoint", "ten-plain.pt", *data),
        "does not fit model cifar_resnet_small",
        "the file's head has 10 classes, the model 3",
    )


@pytest.mark.slow
def test_corrupt_checkpoint_is_one_line(cli, tmp_path):
    Path(tmp_path / "corrupt.pt").write_bytes(b"\x80\x02not really a pickle")
    _one_line_error(cli("pretrain", "--model", "corrupt.pt"), "cannot read checkpoint corrupt.pt")


@pytest.mark.slow
def test_weights_that_cannot_be_downloaded_suggest_checkpoint(cli, tmp_path):
    env = {
        "TORCH_HOME": str(tmp_path / "torch"),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
    }
    result = cli("pretrain", "--model", "resnet18", "--weights", "DEFAULT", "--input-size", "32", env=env)
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]  # torch.hub announces the download on stderr first
    assert last.startswith("ct-tune: error: cannot get the weights ResNet18_Weights.IMAGENET1K_V1 for resnet18")
    assert "--checkpoint" in last
