"""The user's own data: a LightningDataModule or Dataset classes named by class_path, read as the contract says."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import ct_tune
from ct_tune import InputError
from ct_tune.data._user import ComponentSpec, UserData

import pytest
import torch

# A user package written into each test's directory: a DataModule that records every hook it is asked to run
# (with the process id, since workers are processes), and variants that break the contract one way each.
PACKAGE = """
import os

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

LOG = os.path.join(os.path.dirname(__file__), "hooks.log")


def record(hook):
    with open(LOG, "a") as log:
        log.write(f"{os.getpid()} {hook}\\n")


def digits(split, normalized=False):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(bunch.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    parts = {"train": order[:1000], "val": order[1000:1400], "test": order[1400:]}
    x, y = x[parts[split]], y[parts[split]]
    return (x - 0.3) / 0.4 if normalized else x, y


class Recorded(L.LightningDataModule):
    def __init__(self, batch_size: int = 100, normalized: bool = False, shift: int = 0):
        super().__init__()
        self.batch_size, self.normalized, self.shift = batch_size, normalized, shift

    def prepare_data(self):
        record("prepare_data")

    def setup(self, stage):
        record(f"setup:{stage}")

    def _loader(self, split, shuffle=False):
        x, y = digits(split, self.normalized)
        moved = os.path.join(os.path.dirname(__file__), "test_moved")  # a test set replaced on disk
        if split == "test" and os.path.exists(moved):
            x = x.flip(0)
        return DataLoader(TensorDataset(x, (y + self.shift) % 10), batch_size=self.batch_size, shuffle=shuffle)

    def train_dataloader(self):
        record("train_dataloader")
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        record("val_dataloader")
        return self._loader("val")

    def test_dataloader(self):
        record("test_dataloader")
        return self._loader("test")


class DictBatches(Recorded):
    def _loader(self, split, shuffle=False):
        x, y = digits(split)
        rows = [{"image": x[i], "label": y[i]} for i in range(len(y))]
        return DataLoader(rows, batch_size=self.batch_size, shuffle=shuffle)


class NoVal(L.LightningDataModule):
    def train_dataloader(self):
        return DataLoader(TensorDataset(*digits("train")), batch_size=100)


class ShuffledVal(Recorded):
    def val_dataloader(self):
        return self._loader("val", shuffle=True)


class OneHot(Recorded):
    def _loader(self, split, shuffle=False):
        x, y = digits(split)
        return DataLoader(TensorDataset(x, torch.nn.functional.one_hot(y, 10).float()), batch_size=100)


class Uint8(Recorded):
    def _loader(self, split, shuffle=False):
        x, y = digits(split)
        return DataLoader(TensorDataset((x * 255).to(torch.uint8), y), batch_size=100)


class BadLabel(Recorded):
    num_classes = 10

    def _loader(self, split, shuffle=False):
        x, y = digits(split)
        y[137] = 12
        return DataLoader(TensorDataset(x, y), batch_size=100)


class Corrupt(TensorDataset):
    def __getitem__(self, index):
        if index == 150:
            raise ValueError(f"corrupt image {index}")
        return super().__getitem__(index)


class BrokenItem(Recorded):
    def _loader(self, split, shuffle=False):
        return DataLoader(Corrupt(*digits(split)), batch_size=100)


class ThreeChannels(Recorded):
    def _loader(self, split, shuffle=False):
        x, y = digits(split)
        return DataLoader(TensorDataset(x.repeat(1, 3, 1, 1), y), batch_size=100)


class NaNInputs(Recorded):
    def _loader(self, split, shuffle=False):
        x, y = digits(split)
        x[4::5] = float("nan")
        return DataLoader(TensorDataset(x, y), batch_size=100)


class NoTest(L.LightningDataModule):
    def val_dataloader(self):
        return DataLoader(TensorDataset(*digits("val")), batch_size=100)


class ValSet(Dataset):
    def __init__(self, split: str = "val"):
        self.x, self.y = digits(split)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, index):
        return self.x[index], int(self.y[index])


class NotData:
    pass
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    package = tmp_path / "userdata"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(PACKAGE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "userdata", raising=False)  # this test's copy, not an earlier test's
    yield package
    sys.modules.pop("userdata", None)


def hooks(project: Path) -> list[str]:
    log = project / "hooks.log"
    return [line.split(" ", 1)[1] for line in log.read_text().splitlines()] if log.exists() else []


def datamodule(class_path: str, **settings) -> UserData:
    return UserData.from_datamodule(ComponentSpec(class_path, settings.pop("init_args", {})), prepare=True, **settings)


def spec(checkpoint: Path, data: dict, **sections) -> dict:
    return {
        "model": {"name": "cifar_resnet_small", "checkpoint": str(checkpoint)},
        "data": data,
        "search": {"granularity": "stage"},
        "objectives": ["accuracy"],
        "sampler": {"name": "random", "seed": 0},
        "budget": {"n_trials": 3},
        "run": {"device": "cpu"},
        **sections,
    }


@pytest.fixture(scope="module")
def digits_state_dict(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights of the small built-in ResNet trained briefly on the same digits, saved as a plain state dict."""
    from ct_tune.models import create_model

    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    model = create_model("cifar_resnet_small", num_classes=10, in_channels=1)
    bunch = load_digits()
    x = torch.tensor(bunch.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(bunch.target)
    model.net.train()
    optimizer = torch.optim.Adam(model.net.parameters(), lr=0.01)
    for _ in range(30):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("weights") / "digits-resnet.pt"
    torch.save(model.net.state_dict(), path)
    return path


# ------------------------------------------------------------------------------------------------ the contract
@pytest.mark.slow
def test_hooks_run_as_the_contract_says_and_test_only_in_report(project, tmp_path, digits_state_dict):
    study = ct_tune.create_study(
        spec(digits_state_dict, {"class_path": "userdata.Recorded"}),
        name="hooks",
        storage=f"sqlite:///{tmp_path}/optuna.db",
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
    )
    assert hooks(project) == ["prepare_data", "setup:fit", "val_dataloader"]  # accuracy needs no train split
    study.run(progress=False)
    after_run = hooks(project)[3:]
    assert after_run == ["prepare_data", "setup:fit", "val_dataloader"]  # one launch, once each, no test
    assert all("test" not in hook for hook in hooks(project))
    report = study.report()
    assert hooks(project)[6:] == ["prepare_data", "setup:fit", "val_dataloader", "setup:test", "test_dataloader"]
    assert report.test_samples == 397 and report.trials[0].test["accuracy"] > 0.5
    assert study.meta["data"]["fingerprints"].keys() == {"val"}


def test_probe_reads_the_train_split_once_with_the_seed_fixed(project):
    first = datamodule("userdata.Recorded", seed=3)
    second = datamodule("userdata.Recorded", seed=3)
    x1, y1 = first.tensors("train")
    x2, y2 = second.tensors("train")
    assert torch.equal(x1, x2) and torch.equal(y1, y2)  # the shuffling train loader, read alike everywhere
    assert first.fingerprints["train"] == second.fingerprints["train"]
    assert datamodule("userdata.Recorded", seed=4).tensors("train")[1].tolist() != y1.tolist()
    first.tensors("train")
    assert hooks(project).count("train_dataloader") == 3  # read once per instance, then kept


def test_dict_batches_need_their_keys_named(project):
    data = datamodule("userdata.DictBatches", batch_keys=("image", "label"))
    x, y = data.tensors("val")
    assert x.shape == (400, 1, 8, 8) and y.dtype == torch.int64
    with pytest.raises(InputError, match=r"are dicts with keys \['image', 'label'\]; name the input and the label"):
        datamodule("userdata.DictBatches").tensors("val")
    with pytest.raises(InputError, match="have no key 'pixels'"):
        datamodule("userdata.DictBatches", batch_keys=("pixels", "label")).tensors("val")


def test_declared_normalisation_gives_pixels_and_attacks_need_them(project):
    plain = datamodule("userdata.Recorded")
    normalized = datamodule("userdata.Recorded", init_args={"normalized": True}, normalization=([0.3], [0.4]))
    assert torch.allclose(plain.tensors("val")[0], normalized.tensors("val")[0], atol=1e-6)
    assert plain.fingerprints["val"] == normalized.fingerprints["val"]  # the same samples, in pixel space
    x = plain.tensors("val")[0]
    assert torch.allclose(normalized.normalizer()(x), (x - 0.3) / 0.4)
    undeclared = datamodule("userdata.Recorded", init_args={"normalized": True})
    with pytest.raises(InputError, match=r"range over \[-0.75, 1.75\] as the loaders serve them, not pixels"):
        undeclared.check_pixel_range()
    with pytest.raises(InputError, match="gives 3 channel"):
        datamodule("userdata.Recorded", normalization=([0.3] * 3, [0.4] * 3)).tensors("val")


def test_datasets_per_split(project):
    data = UserData.from_datasets(
        {"val": ComponentSpec("userdata.ValSet", {}), "test": ComponentSpec("userdata.ValSet", {"split": "test"})}
    )
    assert data.tensors("val")[0].shape == (400, 1, 8, 8) and len(data.tensors("test")[1]) == 397
    assert data.num_classes == 10
    with pytest.raises(InputError, match="no train Dataset given"):
        data.tensors("train")


@pytest.mark.parametrize(
    ("class_path", "init_args", "message"),
    [
        ("nowhere.Module", {}, "cannot import 'nowhere'"),
        ("userdata.Missing", {}, "module 'userdata' has no 'Missing'"),
        ("userdata.NotData", {}, "is not a LightningDataModule (it is a class NotData)"),
        ("userdata.ValSet", {}, "for Dataset classes use data.train / data.val / data.test"),
        ("userdata.Recorded", {"batchsize": 3}, "data.init_args do not fit Recorded: got an unexpected keyword"),
        ("userdata.NoVal", {}, "NoVal has no val_dataloader: ct-tune scores every trial on the val split"),
    ],
)
def test_bad_datamodules_are_one_line(project, class_path, init_args, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        datamodule(class_path, init_args=init_args).tensors("val")


@pytest.mark.parametrize(
    ("class_path", "message"),
    [
        ("userdata.ShuffledVal", "val_dataloader() shuffles; every trial must score the same samples"),
        ("userdata.OneHot", "the target is a float32 tensor of shape (100, 10) for 100 inputs"),
        ("userdata.Uint8", "the input is a uint8 tensor of shape (100, 1, 8, 8); it must be a float tensor"),
        ("userdata.BadLabel", "BadLabel val batches: sample 137 has label 12, outside the 10 classes (0 to 9)"),
        ("userdata.NaNInputs", "NaNInputs val batches: sample 4 holds NaN or infinite values; ct-tune scores"),
        ("userdata.BrokenItem", "BrokenItem val batches: reading a batch failed: ValueError: corrupt image 150; fix"),
    ],
)
def test_batches_that_break_the_contract_are_one_line(project, class_path, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        datamodule(class_path).tensors("val")


def test_missing_test_split_fails_only_at_report(project, tmp_path, digits_state_dict):
    study = ct_tune.create_study(
        spec(digits_state_dict, {"class_path": "userdata.NoTest"}, budget={"n_trials": 1}),
        name="notest",
        storage=f"sqlite:///{tmp_path}/optuna.db",
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
    )
    study.run(progress=False)
    with pytest.raises(InputError, match="NoTest has no test_dataloader; report scores on it: implement it"):
        study.report()


def test_a_worker_with_other_data_refuses_to_run(project, tmp_path, digits_state_dict):
    from ct_tune.bench import Bench

    study = ct_tune.create_study(
        spec(digits_state_dict, {"class_path": "userdata.Recorded"}),
        name="identity",
        storage=f"sqlite:///{tmp_path}/optuna.db",
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
    )
    other = study.spec.model_copy(
        update={"data": study.spec.data.model_copy(update={"init_args": {"shift": 1}})}
    )  # the same images with other labels
    with (
        Bench.open(other, **other.grouping, device="cpu") as bench,
        pytest.raises(InputError, match="the data differs"),
    ):
        bench.check_identity(study.meta, study.name)


@pytest.mark.slow
def test_the_test_split_is_fingerprinted_at_the_first_report(project, tmp_path, digits_state_dict):
    study = ct_tune.create_study(
        spec(digits_state_dict, {"class_path": "userdata.Recorded"}, budget={"n_trials": 1}),
        name="testsplit",
        storage=f"sqlite:///{tmp_path}/optuna.db",
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
    )
    study.run(progress=False)
    study.report()
    assert "test:" not in study.meta["data"]["fingerprint"]  # created and run without reading it
    study.report()  # the same test data: fine
    (project / "test_moved").write_text("")
    with pytest.raises(InputError, match="the test split differs from the one study 'testsplit' was first reported"):
        study.report()


@pytest.mark.parametrize(
    ("class_path", "message"),
    [
        ("userdata.OneHot", "one integer class index per sample"),
        ("userdata.BadLabel", "sample 137 has label 12, outside the 10 classes (0 to 9) the data declares"),
        ("userdata.NaNInputs", "sample 4 holds NaN or infinite values"),
        ("userdata.BrokenItem", "reading a batch failed: ValueError: corrupt image 150"),
        ("userdata.ThreeChannels", "conv1.weight [16, 1, 3, 3] in the file vs [16, 3, 3, 3] in the model"),
    ],
)
def test_bad_user_data_through_the_cli_is_exit_2_and_creates_nothing(
    project, cli_fast, tmp_path, digits_state_dict, class_path, message
):
    import yaml

    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec(digits_state_dict, {"class_path": class_path})))
    result = cli_fast("study", "create", "bad.yaml", "--name", "bad", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ct-tune: error")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.stderr  # after the info lines
    listed = cli_fast("study", "list", "--json", cwd=tmp_path)
    assert listed.json()["studies"] == []
