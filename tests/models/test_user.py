"""The user's own model by class_path: LightningModules from Lightning checkpoints, plain modules from state
dicts, both read weights-only; a pickled checkpoint is refused, never executed."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import ct_tune  # noqa: F401  (torchvision compat first)
from ct_tune import InputError
from ct_tune.models import load_user_model

import lightning as L
import pytest
import torch

PACKAGE = '''
import lightning as L
import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    def __init__(self, width: int = 8, classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(width * 64, classes)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).flatten(1))


class Lit(L.LightningModule):
    def __init__(self, width: int = 8, lr: float = 0.01):
        super().__init__()
        self.save_hyperparameters()
        self.model = Net(width)

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, index):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class Forgetful(L.LightningModule):
    """A module that does not save its hyper-parameters: its checkpoint cannot rebuild it alone."""

    def __init__(self, width: int):
        super().__init__()
        self.model = Net(width)

    def forward(self, x):
        return self.model(x)


class Opaque:
    """A plain Python object, the kind weights-only loading refuses to unpickle."""


class NotModule:
    pass
'''


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "usermodels.py").write_text(textwrap.dedent(PACKAGE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "usermodels", raising=False)
    yield tmp_path
    sys.modules.pop("usermodels", None)


def trained_lightning_checkpoint(root: Path, **init_args) -> tuple[Path, torch.nn.Module]:
    import usermodels

    torch.manual_seed(0)
    module = usermodels.Lit(**init_args)
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    path = root / "lit.ckpt"
    trainer.save_checkpoint(path)
    return path, module.eval()


def test_lightning_module_loads_through_load_from_checkpoint(package):
    path, trained = trained_lightning_checkpoint(package, width=6)
    loaded = load_user_model("usermodels.Lit", {}, checkpoint=path)
    assert type(loaded.net).__name__ == "Lit" and loaded.net.hparams.width == 6  # rebuilt from its own hparams
    assert loaded.input_spec is None and not loaded.net.training
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(loaded(x), trained(x))
    overridden = load_user_model("usermodels.Lit", {"lr": 0.5}, checkpoint=path)
    assert overridden.net.hparams.lr == 0.5 and torch.equal(overridden(x), trained(x))


def test_plain_module_takes_a_state_dict_with_or_without_a_wrapper_prefix(package):
    import usermodels

    path, trained = trained_lightning_checkpoint(package, width=6)
    # the LightningModule wraps the network as self.model: its keys carry "model.", found and stripped
    inner = load_user_model("usermodels.Net", {"width": 6}, checkpoint=path)
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(inner(x), trained(x))
    bare = package / "net.pt"
    torch.save(trained.model.state_dict(), bare)
    assert torch.equal(load_user_model("usermodels.Net", {"width": 6}, checkpoint=bare)(x), trained(x))
    with pytest.raises(InputError, match=r"does not fit model usermodels\.Net: .* differ in shape"):
        load_user_model("usermodels.Net", {"width": 5}, checkpoint=bare)
    assert isinstance(load_user_model("usermodels.Net", {}).net, usermodels.Net)


def test_normalisation_declared_for_a_user_model(package):
    loaded = load_user_model("usermodels.Net", {}, normalization=([0.5], [0.25]))
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(loaded(x), loaded.net((x - 0.5) / 0.25))


def test_a_checkpoint_with_pickled_objects_is_refused_not_executed(package):
    import usermodels

    path, _ = trained_lightning_checkpoint(package)
    data = torch.load(path, weights_only=False)
    data["hyper_parameters"]["helper"] = usermodels.Opaque()
    torch.save(data, path)
    with pytest.raises(InputError, match="holds Python objects besides tensors; ct-tune does not execute pickled code"):
        load_user_model("usermodels.Lit", {}, checkpoint=path)


@pytest.mark.parametrize(
    ("class_path", "init_args", "message"),
    [
        ("usermodels.NotModule", {}, "is a NotModule, not a torch.nn.Module"),
        ("usermodels.Net", {"depth": 3}, "model.init_args do not fit Net: got an unexpected keyword argument 'depth'"),
        ("usermodels.Forgetful", {}, "model.init_args do not fit Forgetful: missing a required argument: 'width'"),
        ("nowhere.Net", {}, "cannot import 'nowhere'"),
    ],
)
def test_bad_model_classes_are_one_line(package, class_path, init_args, message):
    with pytest.raises(InputError, match=message):
        load_user_model(class_path, init_args)


def test_missing_checkpoint_and_unrebuildable_lightning_module(package):
    with pytest.raises(InputError, match=r"model\.checkpoint .*nothing\.ckpt not found"):
        load_user_model("usermodels.Lit", {}, checkpoint=package / "nothing.ckpt")
    import usermodels

    path = package / "forgetful.ckpt"  # what Lightning writes for a module without save_hyperparameters()
    torch.save(
        {"state_dict": usermodels.Forgetful(4).state_dict(), "epoch": 0, "pytorch-lightning_version": "2.6.6"}, path
    )
    with pytest.raises(InputError, match=r"Forgetful\.load_from_checkpoint.* cannot rebuild the module: .*init_args"):
        load_user_model("usermodels.Forgetful", {}, checkpoint=path)
    assert load_user_model("usermodels.Forgetful", {"width": 4}, checkpoint=path).net.model.conv.out_channels == 4
