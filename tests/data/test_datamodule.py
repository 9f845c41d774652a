"""DataModules: offline datasets, every torchvision dataset's real loader on a tiny fake copy, splits, tensors."""

from __future__ import annotations

import json
import subprocess
import sys

from ct_tune import InputError
from ct_tune.data import CTDataModule, create_datamodule, list_datasets
from ct_tune.data._splits import allocate, keyed_order, stratified_partition
from ct_tune.models import InputSpec, create_model

import numpy as np
import pytest
import torch

from tests._fakes import WRITERS, write_imagefolder

RGB32 = InputSpec(size=32, channels=3, mean=(0.5,) * 3, std=(0.5,) * 3)


@pytest.fixture(scope="module")
def digits() -> CTDataModule:
    return create_datamodule("digits", seed=0)


def _assert_disjoint(dm: CTDataModule) -> None:
    seen: dict[str, set[int]] = {}
    for split in ("train", "val", "test"):
        pool, indices = dm.split_indices(split)
        assert len(np.unique(indices)) == len(indices)
        mine = set(indices.tolist())
        assert not (seen.get(pool, set()) & mine), f"{split} overlaps another split of pool {pool}"
        seen.setdefault(pool, set()).update(mine)


def test_list_datasets_names_every_dataset():
    assert list_datasets() == [
        "digits",
        "mnist5k",
        "cifar10",
        "cifar100",
        "mnist",
        "fashion_mnist",
        "svhn",
        "stl10",
        "dtd",
        "flowers102",
        "oxford_pets",
        "food101",
        "fgvc_aircraft",
        "imagefolder",
    ]


# ------------------------------------------------------------------------------------------- offline sets
def test_digits_loads_real_data(digits):
    assert digits.num_classes == 10 and digits.classes == [str(d) for d in range(10)]
    assert (digits.native_channels, digits.native_size) == (1, 8)
    assert digits.sizes() == {"train": 1079, "val": 359, "test": 359}
    x, y = digits.tensors("val")
    assert x.shape == (359, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert np.array_equal(y.numpy(), digits.labels("val"))
    _assert_disjoint(digits)


@pytest.mark.slow
def test_mnist5k_loads_real_data():
    dm = create_datamodule("mnist5k", seed=1)
    assert dm.num_classes == 10 and (dm.native_channels, dm.native_size) == (1, 28)
    assert dm.sizes() == {"train": 3000, "val": 1000, "test": 1000}
    assert np.bincount(dm.labels("val")).tolist() == [100] * 10  # 500 per class, stratified exactly
    x, _ = dm.tensors("test", limit=50)
    assert x.shape == (50, 1, 28, 28) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    _assert_disjoint(dm)


# --------------------------------------------------------------------------------- splits: the algorithm
def test_allocate_is_exact_and_proportional():
    counts = np.array([178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
    taken = allocate(counts, 359)
    assert taken.sum() == 359 and np.all(taken <= counts)
    assert np.all(np.abs(taken - counts * 359 / counts.sum()) < 1)


def test_keyed_order_is_a_fixed_permutation():
    order = keyed_order(10, seed=0, salt="split")
    assert sorted(order.tolist()) == list(range(10))
    assert order.tolist() == keyed_order(10, seed=0, salt="split").tolist()
    assert order.tolist() != keyed_order(10, seed=1, salt="split").tolist()


def test_test_split_does_not_depend_on_val_fraction():
    labels = np.arange(500) % 5
    a = stratified_partition(labels, {"test": 0.2, "val": 0.1}, seed=3, salt="split", rest="train")
    b = stratified_partition(labels, {"test": 0.2, "val": 0.3}, seed=3, salt="split", rest="train")
    assert np.array_equal(a["test"], b["test"])
    assert len(a["val"]) == 50 and len(b["val"]) == 150


def test_splits_are_stratified(digits):
    overall = np.bincount(
        digits.labels("train").tolist() + digits.labels("val").tolist() + digits.labels("test").tolist()
    )
    for split in ("val", "test"):
        counts = np.bincount(digits.labels(split), minlength=10)
        expected = overall * 0.2
        assert np.all(np.abs(counts - expected) <= 1), (split, counts, expected)


def test_same_seed_same_split_other_seed_other_split(digits):
    again = create_datamodule("digits", seed=0)
    other = create_datamodule("digits", seed=1)
    assert again.fingerprint == digits.fingerprint
    for split in ("train", "val", "test"):
        assert np.array_equal(again.split_indices(split)[1], digits.split_indices(split)[1])
    assert other.fingerprint != digits.fingerprint
    assert not np.array_equal(other.split_indices("val")[1], digits.split_indices("val")[1])


@pytest.mark.slow
def test_split_is_identical_in_another_process(digits):
    code = (
        "import json, ct_tune\n"
        "from ct_tune.data import create_datamodule\n"
        "dm = create_datamodule('digits', seed=0)\n"
        "print(json.dumps({'fp': dm.fingerprint, 'val': dm.split_indices('val')[1].tolist()}))\n"
    )
    env = {"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, timeout=300)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["fp"] == digits.fingerprint
    assert result["val"] == digits.split_indices("val")[1].tolist()


def test_subset_sizes_are_stratified_and_nested_in_their_split(digits):
    small = create_datamodule("digits", seed=0, train_size=100, val_size=50)
    assert small.sizes() == {"train": 100, "val": 50, "test": 359}
    assert set(small.split_indices("val")[1]) <= set(digits.split_indices("val")[1])
    assert np.bincount(small.labels("val"), minlength=10).tolist() == [5] * 10
    assert small.fingerprint != digits.fingerprint


def test_limit_takes_a_stratified_subset_of_the_split(digits):
    x, y = digits.tensors("val", limit=100)
    assert x.shape[0] == 100 and np.all(np.abs(np.bincount(y.numpy(), minlength=10) - 10) <= 1)
    full_x, full_y = digits.tensors("val")
    positions = np.searchsorted(digits.split_indices("val")[1], digits._limited("val", 100))
    assert torch.equal(full_x[positions], x) and torch.equal(full_y[positions], y)


def test_tensors_are_cached_per_split_limit_and_dtype(digits):
    first = digits.tensors("test")
    assert digits.tensors("test")[0] is first[0]
    half = digits.tensors("test", dtype=torch.float16)
    assert half[0].dtype == torch.float16 and half[0] is not first[0]
    assert torch.allclose(half[0].float(), first[0], atol=1e-3)


def test_tensors_made_in_inference_mode_are_normal_tensors():
    dm = create_datamodule("digits", seed=0, val_size=10)
    with torch.inference_mode():
        x, _ = dm.tensors("val")
    assert not x.is_inference()
    delta = torch.zeros_like(x, requires_grad=True)
    ((x + delta) * x).sum().backward()  # x saved for backward: fails if x is an inference tensor
    assert torch.equal(delta.grad, x)


# --------------------------------------------------------------------------------- transforms from the model
def test_model_input_spec_resizes_and_repeats_channels():
    dm = create_datamodule("digits", seed=0, val_size=20)
    model = create_model("resnet18", num_classes=dm.num_classes, in_channels=dm.native_channels, input_size=32)
    assert model.input_spec.channels == 3 and model.input_spec.size == 32
    dm.input_spec = model.input_spec
    x, _ = dm.tensors("val")
    assert x.shape == (20, 3, 32, 32)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])  # grey repeated to RGB
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0  # pixels; the model normalises
    logits = model(x)
    assert logits.shape == (20, 10)


def test_builtin_model_takes_native_size_and_channels(digits):
    model = create_model("cifar_resnet_small", num_classes=10, in_channels=1)
    dm = create_datamodule("digits", seed=0, val_size=10, input_spec=model.input_spec)
    x, _ = dm.tensors("val")
    assert x.shape == (10, 1, 8, 8)


def test_augmentation_only_touches_training_batches():
    dm = create_datamodule("digits", seed=0, augment=True, batch_size=2000)
    torch.manual_seed(0)
    first = next(iter(dm.train_dataloader()))[0]
    torch.manual_seed(1)
    second = next(iter(dm.train_dataloader()))[0]
    assert first.shape == second.shape
    val_a = next(iter(dm.val_dataloader()))[0]
    val_b = next(iter(dm.val_dataloader()))[0]
    assert torch.equal(val_a, val_b)
    assert torch.equal(val_a, dm.tensors("val")[0])


# -------------------------------------------------------------------- test data stays out of train and val
def test_test_images_never_reach_train_or_val_loaders(tmp_path):
    write_imagefolder(tmp_path / "tree", classes=4, per_class=25)  # image n has every pixel = n
    dm = create_datamodule("imagefolder", data_dir=tmp_path / "tree", seed=5, batch_size=16)

    def identities(loader) -> set[int]:
        return {round(float(x[0, 0, 0]) * 255) for batch, _ in loader for x in batch}

    train, val, test = (
        identities(dm.train_dataloader()),
        identities(dm.val_dataloader()),
        identities(dm.test_dataloader()),
    )
    assert len(train) + len(val) + len(test) == 100
    assert not (test & train) and not (test & val) and not (train & val)
    assert {round(float(v) * 255) for v in dm.tensors("test")[0][:, 0, 0, 0]} == test


# ------------------------------------------------------------------------ torchvision datasets, real loaders
@pytest.mark.parametrize("name", sorted(WRITERS))
def test_torchvision_dataset_loads_a_fake_copy_in_its_real_format(name, tmp_path, monkeypatch):
    root = tmp_path / "data"
    fake = WRITERS[name](root)
    for owner, attribute, value in fake.patches:
        monkeypatch.setattr(owner, attribute, value)
    dm = create_datamodule(name, data_dir=root, seed=0, input_spec=RGB32, batch_size=8)
    assert dm.num_classes == fake.num_classes
    pools = {split: dm.split_indices(split)[0] for split in ("train", "val", "test")}
    for official in ("val", "test"):
        if official in fake.pools:
            assert pools[official] == official and dm.sizes()[official] == fake.pools[official]
        else:
            assert pools[official] == "train"
    from_train = sum(size for split, size in dm.sizes().items() if pools[split] == "train")
    assert from_train == fake.pools["train"]
    _assert_disjoint(dm)
    x, y = dm.tensors("val")
    assert x.shape == (dm.sizes()["val"], 3, 32, 32) and y.shape == (dm.sizes()["val"],)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    batch, labels = next(iter(dm.train_dataloader()))
    assert batch.shape[1:] == (3, 32, 32) and labels.dtype == torch.int64


def test_imagefolder_with_split_folders_uses_them(tmp_path):
    for split in ("train", "val", "test"):
        write_imagefolder(tmp_path / split, classes=2, per_class=3, gray=True)
    dm = create_datamodule("imagefolder", data_dir=tmp_path)
    assert dm.native_channels == 1 and dm.native_size is None and dm.size == 12
    assert {split: dm.split_indices(split)[0] for split in ("train", "val", "test")} == {
        "train": "train",
        "val": "val",
        "test": "test",
    }
    assert dm.tensors("val")[0].shape == (6, 1, 12, 12)


def test_imagefolder_refuses_split_folders_with_different_classes(tmp_path):
    write_imagefolder(tmp_path / "train", classes=3, per_class=2)
    write_imagefolder(tmp_path / "val", classes=2, per_class=2)
    with pytest.raises(InputError, match="same class folders"):
        create_datamodule("imagefolder", data_dir=tmp_path)


# ---------------------------------------------------------------------------------------------- bad input
def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(InputError, match="unknown dataset 'cifar11'; choose one of: digits, mnist5k, cifar10"):
        create_datamodule("cifar11")


@pytest.mark.parametrize("name", ["cifar10", "mnist", "dtd"])
def test_missing_dataset_names_dataset_directory_and_fixes(name, tmp_path):
    with pytest.raises(InputError) as caught:
        create_datamodule(name, data_dir=tmp_path / "empty")
    message = str(caught.value)
    assert "\n" not in message
    assert f"dataset {name} not found in {tmp_path / 'empty'}" in message
    assert "--data-dir" in message and "CT_TUNE_DATA" in message and "--download" in message


def test_data_dir_falls_back_to_the_environment(tmp_path, monkeypatch):
    write_imagefolder(tmp_path / "tree", classes=2, per_class=10)
    monkeypatch.setenv("CT_TUNE_DATA", str(tmp_path / "tree"))
    assert create_datamodule("imagefolder").describe()["location"] == str(tmp_path / "tree")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_fraction": 0.0}, "val fraction"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "leave no training data"),
        ({"val_size": 0}, "val_size"),
        ({"batch_size": 0}, "batch size"),
    ],
)
def test_bad_split_arguments_are_input_errors(kwargs, match):
    with pytest.raises(InputError, match=match):
        create_datamodule("digits", **kwargs)
