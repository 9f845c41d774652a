"""Tiny on-disk copies of torchvision datasets in their real file formats, for exercising the real loaders.

Each writer lays out files exactly where torchvision looks under ``root`` and returns a ``Fake``: the
number of classes and pool sizes the loader must report, and the checksum constants to swap in for datasets
whose loader verifies MD5 sums of the official files (CIFAR, SVHN, STL-10, Flowers-102). The checksums are
the only thing replaced; the torchvision classes read, parse and index the files as they would the real ones.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


@dataclass
class Fake:
    num_classes: int
    pools: dict[str, int]  # images per pool (train, and val/test where official)
    patches: list[tuple[Any, str, Any]] = field(default_factory=list)  # (owner, attribute, value)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _image(rng: np.random.Generator, height: int, width: int, channels: int = 3) -> Image.Image:
    array = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return Image.fromarray(array[..., 0] if channels == 1 else array)


def _jpeg(path: Path, rng: np.random.Generator, index: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = (30, 40) if index % 2 else (44, 30)  # photos of varying size
    _image(rng, height, width).save(path, format="JPEG")


# ------------------------------------------------------------------------------------------- CIFAR
def _cifar(root: Path, folder: str, batches: dict[str, int], num_classes: int, label_key: str, meta: tuple[str, str]):
    base = root / folder
    base.mkdir(parents=True)
    rng = _rng()
    sums = {}
    for name, count in batches.items():
        labels = [i % num_classes for i in range(count)]
        data = rng.integers(0, 256, size=(count, 3 * 32 * 32), dtype=np.uint8)
        with open(base / name, "wb") as handle:
            pickle.dump({"data": data, label_key: labels}, handle)
        sums[name] = md5(base / name)
    meta_file, meta_key = meta
    with open(base / meta_file, "wb") as handle:
        pickle.dump({meta_key: [f"class{c}" for c in range(num_classes)]}, handle)
    return sums, md5(base / meta_file)


def write_cifar10(root: Path) -> Fake:
    from torchvision.datasets import CIFAR10

    train = {f"data_batch_{i}": 20 for i in range(1, 6)}
    sums, meta_md5 = _cifar(
        root, "cifar-10-batches-py", {**train, "test_batch": 20}, 10, "labels", ("batches.meta", "label_names")
    )
    return Fake(
        10,
        {"train": 100, "test": 20},
        [
            (CIFAR10, "train_list", [[name, sums[name]] for name in train]),
            (CIFAR10, "test_list", [["test_batch", sums["test_batch"]]]),
            (CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names", "md5": meta_md5}),
        ],
    )


def write_cifar100(root: Path) -> Fake:
    from torchvision.datasets import CIFAR100

    sums, meta_md5 = _cifar(
        root, "cifar-100-python", {"train": 300, "test": 100}, 100, "fine_labels", ("meta", "fine_label_names")
    )
    return Fake(
        100,
        {"train": 300, "test": 100},
        [
            (CIFAR100, "train_list", [["train", sums["train"]]]),
            (CIFAR100, "test_list", [["test", sums["test"]]]),
            (CIFAR100, "meta", {"filename": "meta", "key": "fine_label_names", "md5": meta_md5}),
        ],
    )


# ------------------------------------------------------------------------------------------- MNIST
def _idx(path: Path, array: np.ndarray) -> None:
    """The IDX format of LeCun's MNIST files: magic (0, 0, type 0x08 = ubyte, ndim), big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _mnist_like(root: Path, folder: str, train: int, test: int) -> Fake:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = _rng()
    for prefix, count in (("train", train), ("t10k", test)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, size=(count, 28, 28)))
        _idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(count) % 10)
    return Fake(10, {"train": train, "test": test})


def write_mnist(root: Path) -> Fake:
    return _mnist_like(root, "MNIST", 60, 20)


def write_fashion_mnist(root: Path) -> Fake:
    return _mnist_like(root, "FashionMNIST", 60, 20)


# -------------------------------------------------------------------------------------------- SVHN
def write_svhn(root: Path) -> Fake:
    from scipy.io import savemat
    from torchvision.datasets import SVHN

    root.mkdir(parents=True, exist_ok=True)
    rng = _rng()
    split_list = {key: list(value) for key, value in SVHN.split_list.items()}
    for split, count in (("train", 60), ("test", 20)):
        images = rng.integers(0, 256, size=(32, 32, 3, count), dtype=np.uint8)
        labels = (np.arange(count) % 10 + 1).reshape(-1, 1)  # SVHN's labels are 1..10, 10 meaning digit 0
        path = root / f"{split}_32x32.mat"
        savemat(path, {"X": images, "y": labels.astype(np.uint8)})
        split_list[split][2] = md5(path)
    return Fake(10, {"train": 60, "test": 20}, [(SVHN, "split_list", split_list)])


# ------------------------------------------------------------------------------------------ STL-10
def write_stl10(root: Path) -> Fake:
    from torchvision.datasets import STL10

    base = root / "stl10_binary"
    base.mkdir(parents=True)
    rng = _rng()
    counts = {"train": 40, "test": 20, "unlabeled": 2}
    for split, count in counts.items():
        rng.integers(0, 256, size=(count, 3, 96, 96), dtype=np.uint8).tofile(base / f"{split}_X.bin")
        if split != "unlabeled":
            (np.arange(count) % 10 + 1).astype(np.uint8).tofile(base / f"{split}_y.bin")  # 1-based on disk
    (base / "class_names.txt").write_text("\n".join(f"stl{c}" for c in range(10)) + "\n")
    train_list = [[name, md5(base / name)] for name in ("train_X.bin", "train_y.bin", "unlabeled_X.bin")]
    test_list = [[name, md5(base / name)] for name in ("test_X.bin", "test_y.bin")]
    return Fake(10, {"train": 40, "test": 20}, [(STL10, "train_list", train_list), (STL10, "test_list", test_list)])


# ------------------------------------------------------------------------------------ photo folders
def write_dtd(root: Path) -> Fake:
    base = root / "dtd" / "dtd"
    rng = _rng()
    classes = ["banded", "dotted", "striped"]
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    index = 0
    for cls in classes:
        for split, count in (("train", 6), ("val", 2), ("test", 2)):
            for _ in range(count):
                name = f"{cls}_{index:04d}.jpg"
                _jpeg(base / "images" / cls / name, rng, index)
                lists[split].append(f"{cls}/{name}")
                index += 1
    (base / "labels").mkdir(parents=True)
    for split, lines in lists.items():
        (base / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")
    return Fake(3, {"train": 18, "val": 6, "test": 6})


def write_flowers102(root: Path) -> Fake:
    from scipy.io import savemat
    from torchvision.datasets import Flowers102

    base = root / "flowers-102"
    rng = _rng()
    count = 30
    for image_id in range(1, count + 1):
        _jpeg(base / "jpg" / f"image_{image_id:05d}.jpg", rng, image_id)
    labels = np.array([(i % 3) + 1 for i in range(count)])  # 1-based on disk
    savemat(base / "imagelabels.mat", {"labels": labels.reshape(1, -1)})
    ids = np.arange(1, count + 1)
    savemat(
        base / "setid.mat",
        {"trnid": ids[:18].reshape(1, -1), "valid": ids[18:24].reshape(1, -1), "tstid": ids[24:].reshape(1, -1)},
    )
    file_dict = dict(Flowers102._file_dict)
    file_dict["label"] = ("imagelabels.mat", md5(base / "imagelabels.mat"))
    file_dict["setid"] = ("setid.mat", md5(base / "setid.mat"))
    return Fake(102, {"train": 18, "val": 6, "test": 6}, [(Flowers102, "_file_dict", file_dict)])


def write_oxford_pets(root: Path) -> Fake:
    base = root / "oxford-iiit-pet"
    rng = _rng()
    breeds = [("Abyssinian", 1, 1), ("american_bulldog", 2, 2), ("Bengal", 3, 1)]
    lines: dict[str, list[str]] = {"trainval": [], "test": []}
    index = 0
    for breed, class_id, species in breeds:
        for split, count in (("trainval", 8), ("test", 3)):
            for _ in range(count):
                index += 1
                image_id = f"{breed}_{index}"
                _jpeg(base / "images" / f"{image_id}.jpg", rng, index)
                lines[split].append(f"{image_id} {class_id} {species} {class_id}")
    (base / "annotations").mkdir(parents=True)
    for split, entries in lines.items():
        (base / "annotations" / f"{split}.txt").write_text("\n".join(entries) + "\n")
    return Fake(3, {"train": 24, "test": 9})


def write_food101(root: Path) -> Fake:
    base = root / "food-101"
    rng = _rng()
    meta: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    index = 0
    for cls in ("apple_pie", "pizza", "sushi"):
        for split, count in (("train", 8), ("test", 3)):
            for _ in range(count):
                index += 1
                _jpeg(base / "images" / cls / f"{index}.jpg", rng, index)
                meta[split].setdefault(cls, []).append(f"{cls}/{index}")
    (base / "meta").mkdir(parents=True)
    for split, entries in meta.items():
        (base / "meta" / f"{split}.json").write_text(json.dumps(entries))
    return Fake(3, {"train": 24, "test": 9})


def write_fgvc_aircraft(root: Path) -> Fake:
    base = root / "fgvc-aircraft-2013b" / "data"
    rng = _rng()
    variants = ["707-320", "A300B4", "Cessna 172"]  # names may hold spaces
    base.mkdir(parents=True)
    (base / "variants.txt").write_text("\n".join(variants) + "\n")
    index = 0
    for split, count in (("train", 6), ("val", 2), ("test", 2)):
        lines = []
        for variant in variants:
            for _ in range(count):
                index += 1
                image_id = f"{index:07d}"
                _jpeg(base / "images" / f"{image_id}.jpg", rng, index)
                lines.append(f"{image_id} {variant}")
        (base / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    return Fake(3, {"train": 18, "val": 6, "test": 6})


# ------------------------------------------------------------------------------------- imagefolder
def write_imagefolder(root: Path, *, classes: int = 3, per_class: int = 10, size: int = 12, gray: bool = False) -> Fake:
    """``root/<class>/<n>.png``; image n of the whole tree has every pixel equal to n (an identity tag)."""
    index = 0
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        for _ in range(per_class):
            index += 1
            value = np.full((size, size) if gray else (size, size, 3), index, dtype=np.uint8)
            Image.fromarray(value).save(folder / f"{index:04d}.png")
    return Fake(classes, {"train": classes * per_class})


WRITERS: dict[str, Callable[[Path], Fake]] = {
    "cifar10": write_cifar10,
    "cifar100": write_cifar100,
    "mnist": write_mnist,
    "fashion_mnist": write_fashion_mnist,
    "svhn": write_svhn,
    "stl10": write_stl10,
    "dtd": write_dtd,
    "flowers102": write_flowers102,
    "oxford_pets": write_oxford_pets,
    "food101": write_food101,
    "fgvc_aircraft": write_fgvc_aircraft,
    "imagefolder": write_imagefolder,
}
