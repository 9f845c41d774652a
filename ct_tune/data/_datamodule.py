"""Data for a study: one LightningDataModule per dataset, three disjoint splits, pixel-space samples.

- Splits: ``train`` (pretraining, linear probes), ``val`` (what a study scores), ``test`` (a final report
  only). A dataset's official val/test split is used where it has one; otherwise a stratified fraction of
  the train pool is cut off with a fixed, hash-based order (``ct_tune._splits``): the same seed gives the same
  split on any machine, process and worker. ``fingerprint`` hashes the split indices and labels.
- Samples are float32 pixels in [0, 1], resized and channel-matched for the model's ``InputSpec``;
  normalisation happens in the model (``LoadedModel.forward``), not here.
- ``samples(split)`` serves an evaluation set a batch at a time from the per-machine cache
  (``ct_tune.data._cache``): decoded and resized once per machine, read by every worker.
  ``tensors(split)`` decodes a whole split into one tensor (pretraining, small data, the Python API).
- Data directory: ``data_dir`` argument (``--data-dir``) > ``$CT_TUNE_DATA`` > ``$XDG_CACHE_HOME/ct-tune/data``
  (``~/.cache/ct-tune/data``). torchvision datasets keep torchvision's layout under it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Any, Literal

from ct_tune._errors import InputError
from ct_tune.data._cache import MemoryWriter, SplitCache, SplitWriter
from ct_tune.data._catalogue import DATASETS, Source, check_dataset_name, resolve_data_dir
from ct_tune.data._samples import Samples
from ct_tune.data._splits import stratified_partition, stratified_subset
from ct_tune.data._transforms import build_transform
from ct_tune.models import InputSpec

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

__all__ = ["SPLITS", "CTDataModule", "create_datamodule"]

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
_DECODE_BATCH = 64  # images decoded per step while a split is cached (a batch is transient)
Split = Literal["train", "val", "test"]


class _SplitDataset(Dataset):
    """``pool[indices[i]]`` with a transform; what the dataloaders serve."""

    def __init__(self, pool: Dataset, indices: np.ndarray, transform: Any) -> None:
        self.pool = pool
        self.indices = indices
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image, label = self.pool[int(self.indices[index])]
        return self.transform(image), int(label)


class CTDataModule(L.LightningDataModule):
    """A dataset cut into train/val/test, served in pixel space for one model's input spec.

    Built eagerly by :func:`create_datamodule` (so ``num_classes`` is known before the model is built);
    ``prepare_data``/``setup`` have nothing left to do. Set ``input_spec`` once the model is known.
    """

    def __init__(
        self,
        name: str,
        source: Source,
        splits: dict[str, tuple[str, np.ndarray]],
        *,
        input_spec: InputSpec | None,
        settings: dict[str, Any],
        batch_size: int = 256,
        num_workers: int = 0,
        augment: bool = False,
        cache: SplitCache | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.source = source
        self._splits = splits
        self.settings = settings
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augment = augment
        self._input_spec = input_spec
        self.cache = cache  # None: every process decodes into memory
        self._cache: dict[tuple[Any, ...], tuple[Tensor, Tensor]] = {}
        self._stored: dict[tuple[Any, ...], tuple[Samples, Tensor]] = {}
        self._stamps: dict[str, str] = {}

    # ----------------------------------------------------------------------------------- what it holds
    @property
    def num_classes(self) -> int:
        return len(self.source.classes)

    @property
    def classes(self) -> list[str]:
        return list(self.source.classes)

    @property
    def native_channels(self) -> int:
        return self.source.native_channels

    @property
    def native_size(self) -> int | None:
        """Side of the images as stored (None when they vary, as in photo datasets)."""
        return self.source.native_size

    @property
    def seed(self) -> int:
        return int(self.settings["seed"])

    @property
    def input_spec(self) -> InputSpec | None:
        return self._input_spec

    @input_spec.setter
    def input_spec(self, spec: InputSpec | None) -> None:
        if spec != self._input_spec:
            self.clear_cache()
        self._input_spec = spec

    @property
    def size(self) -> int:
        """The square side samples are served at."""
        if self._input_spec is not None and self._input_spec.size is not None:
            return self._input_spec.size
        return self.source.default_size

    @property
    def channels(self) -> int:
        return self._input_spec.channels if self._input_spec is not None else self.source.native_channels

    def split_indices(self, split: Split) -> tuple[str, np.ndarray]:
        """(pool name, sorted indices into that pool) of a split."""
        _check_split(split)
        pool, indices = self._splits[split]
        return pool, indices.copy()

    def labels(self, split: Split) -> np.ndarray:
        pool, indices = self._splits[_check_split(split)]
        return self.source.pools[pool].labels[indices]

    def sizes(self) -> dict[str, int]:
        return {split: int(self._splits[split][1].size) for split in SPLITS}

    @property
    def fingerprint(self) -> str:
        """Hash of the dataset name, classes, and every split's pool, indices and labels (a study's identity)."""
        return self._hash(SPLITS)

    def split_fingerprint(self, split: Split) -> str:
        """The same hash over one split: what MLflow shows as that split's digest (equal val, equal digest,
        whatever the other splits are)."""
        return self._hash((_check_split(split),))

    def _hash(self, splits: tuple[str, ...]) -> str:
        digest = hashlib.sha256()
        digest.update(json.dumps({"name": self.name, "classes": self.classes}, sort_keys=True).encode())
        for split in splits:
            pool, indices = self._splits[split]
            digest.update(f"|{split}:{pool}:".encode())
            digest.update(np.ascontiguousarray(indices, dtype="<i8").tobytes())
            digest.update(np.ascontiguousarray(self.labels(split), dtype="<i8").tobytes())  # type: ignore[arg-type]
        return digest.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """What a study records to prove which data it used (``settings`` rebuild the same split)."""
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "fingerprints": {split: self.split_fingerprint(split) for split in SPLITS},  # type: ignore[arg-type]
            "settings": dict(self.settings),
            "sizes": self.sizes(),
            "num_classes": self.num_classes,
            "native_channels": self.native_channels,
            "native_size": self.native_size,
            "input_size": self.size,
            "input_channels": self.channels,
            "official_splits": [pool for pool in ("val", "test") if pool in self.source.pools],
            "location": self.source.location,
        }

    # --------------------------------------------------------------------------------- datasets, loaders
    def transform(self, *, train: bool = False) -> Any:
        spec = self._input_spec
        return build_transform(
            native_size=self.source.native_size,
            size=self.size,
            channels=self.channels,
            crop_pct=spec.crop_pct if spec else 1.0,
            interpolation=spec.interpolation if spec else "bilinear",
            train=train,
            augment=self.augment,
            flip=self.source.flip,
        )

    def dataset(self, split: Split, *, train_transform: bool = False, limit: int | None = None) -> Dataset:
        """The split as a map-style dataset of (pixels, label); ``train_transform`` adds augmentation."""
        pool, indices = self._splits[_check_split(split)]
        if limit is not None:
            indices = self._limited(split, limit)
        return _SplitDataset(self.source.pools[pool].dataset, indices, self.transform(train=train_transform))

    def _loader(self, dataset: Dataset, *, shuffle: bool, drop_last: bool = False) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train", train_transform=True)
        # a last batch of a handful of images gives noisy BatchNorm statistics; drop it when batches are full
        return self._loader(dataset, shuffle=True, drop_last=len(dataset) > self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), shuffle=False)

    # ------------------------------------------------------------------------------------ tensors, cached
    def _limited(self, split: Split, limit: int) -> np.ndarray:
        pool, indices = self._splits[split]
        if limit < 1:
            raise InputError(f"limit must be at least 1, not {limit}")
        labels = self.source.pools[pool].labels[indices]
        return stratified_subset(indices, labels, limit, seed=self.seed, salt=f"limit:{split}")

    def samples(
        self,
        split: Split,
        *,
        device: torch.device | str | None = None,
        limit: int | None = None,
        resident_mb: float = 0,
    ) -> tuple[Samples, Tensor]:
        """``(x, y)``: a split's rows served a batch at a time as float32 on ``device`` (``x[rows]``), and
        int64 labels there. From the machine's cache when there is one (built on first use), else decoded
        into this process's memory. ``limit`` takes a seeded, stratified subset; ``resident_mb``: on CUDA,
        the compact rows stay on the GPU when they fit."""
        _check_split(split)
        device = torch.device(device) if device is not None else torch.device("cpu")
        key = (split, limit)
        if key not in self._stored:
            self._stored[key] = self._decoded(split, limit)
        x, y = self._stored[key]
        return x.on(device, resident_mb=resident_mb), y.to(device)

    def tensors(
        self,
        split: Split,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        limit: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(x, y)``: all images of a split as one (N, C, H, W) pixel tensor, and int64 labels.

        Kept per split, limit, device and dtype; the order is the split's index order. ``limit`` takes a
        seeded, stratified subset. Treat the result as read-only. Evaluations read :meth:`samples` instead.
        """
        device = torch.device(device) if device is not None else torch.device("cpu")
        key = (split, limit, str(device), dtype)
        if key not in self._cache:
            x, y = self.samples(split, device=device, limit=limit)
            # normal tensors even if asked for inside inference mode: attacks later differentiate through them
            with torch.inference_mode(False), torch.no_grad():
                self._cache[key] = (x.all().to(dtype or torch.float32), y)
        return self._cache[key]

    def _decoded(self, split: Split, limit: int | None) -> tuple[Samples, Tensor]:
        started = time.perf_counter()
        if self.cache is None:
            writer = MemoryWriter()
            self._fill(writer, split, limit)
            x, y = writer.finish()
        else:
            descriptor = self._descriptor(split, limit)
            label = f"{self.name}-{split}"
            folder = self.cache.folder(label, descriptor)
            entry = self.cache.find(folder, descriptor)
            if entry is None:
                with self.cache.locked(folder.name):
                    entry = self.cache.find(folder, descriptor) or self.cache.build(
                        label, descriptor, lambda writer: self._fill(writer, split, limit)
                    )
            x, y = entry.samples, entry.labels
        logger.info(
            "%s %s: %d images %s as %s (%.0f MB%s) in %.1f s",
            self.name,
            split,
            len(x),
            "x".join(map(str, x.shape[1:])),
            x.encoding,
            x.nbytes / 2**20,
            ", read from the cache" if self.cache is not None else ", in memory",
            time.perf_counter() - started,
        )
        return x, y

    def _fill(self, writer: SplitWriter | MemoryWriter, split: Split, limit: int | None) -> None:
        """Decode and transform a split in index order into ``writer``; the labels must match the index."""
        pool, indices = self._splits[split]
        if limit is not None:
            indices = self._limited(split, limit)
        expected = self.source.pools[pool].labels[indices]
        dataset = _SplitDataset(self.source.pools[pool].dataset, indices, self.transform(train=False))
        loader = DataLoader(dataset, batch_size=_DECODE_BATCH, shuffle=False, num_workers=self.num_workers)
        seen = []
        with torch.inference_mode(False), torch.no_grad():
            for images, labels in loader:
                writer.append(images, labels)
                seen.append(labels)
        if not np.array_equal(torch.cat(seen).numpy(), expected):
            raise RuntimeError(f"{self.name}: labels served by the dataset disagree with its label index")

    def _descriptor(self, split: Split, limit: int | None) -> dict[str, Any]:
        """What a cached split's rows depend on (its cache key): the split, the transform, the files."""
        spec = self._input_spec
        pool = self._splits[split][0]
        return {
            "kind": "builtin",
            "name": self.name,
            "fingerprint": self.fingerprint,
            "split": split,
            "limit": limit,
            "size": self.size,
            "channels": self.channels,
            "crop_pct": spec.crop_pct if spec else 1.0,
            "interpolation": spec.interpolation if spec else "bilinear",
            "native_size": self.source.native_size,
            "files": self._files_stamp(pool),
            "versions": decoder_versions(),
        }

    def _files_stamp(self, pool: str) -> str:
        """Hash of the pool's image files (path, size, modification time): an edited image is a new entry.
        Datasets without a file per image (arrays, archives) are named by where they were read from."""
        if pool not in self._stamps:
            files = getattr(self.source.pools[pool].dataset, "samples", None)
            digest = hashlib.sha256(self.source.location.encode())
            for path, _ in files or ():
                stat = os.stat(path)
                digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
            self._stamps[pool] = digest.hexdigest()[:16]
        return self._stamps[pool]

    def clear_cache(self) -> None:
        """Forget what this process holds (the machine's cache on disk stays: ``ct-tune cache clear``)."""
        self._cache.clear()
        self._stored.clear()

    def __repr__(self) -> str:
        sizes = ", ".join(f"{split}={count}" for split, count in self.sizes().items())
        return f"CTDataModule({self.name}, {sizes}, {self.channels}x{self.size}x{self.size}, seed={self.seed})"

    __str__ = __repr__  # Lightning's __str__ builds every dataloader to print its size


def decoder_versions() -> dict[str, str]:
    """The libraries that decode and resize images: another version may give other pixels."""
    import PIL
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "pillow": PIL.__version__}


def _check_split(split: str) -> Split:
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    return split  # type: ignore[return-value]


def create_datamodule(
    name: str,
    *,
    input_spec: InputSpec | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    seed: int = 0,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    train_size: int | None = None,
    val_size: int | None = None,
    test_size: int | None = None,
    augment: bool = False,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> CTDataModule:
    """Load ``name`` and split it; raises ``InputError`` (one line) for unknown names and missing files.

    ``val_fraction``/``test_fraction`` (of the train pool) apply only where the dataset has no official
    split; None takes the dataset's default (``ct_tune._datasets.DATASETS``). ``*_size`` keep a seeded,
    stratified subset of a split. ``input_spec`` may be set later (``datamodule.input_spec = model.input_spec``).
    ``cache``: decoded splits are kept in the machine's cache (``cache_dir``, else ``$CT_TUNE_CACHE``, else
    ``~/.cache/ct-tune/splits``) and read by every process; False decodes them in every process.
    """
    check_dataset_name(name)
    info = DATASETS[name]
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, not {batch_size}")
    if num_workers < 0:
        raise InputError(f"number of workers must be 0 or more, not {num_workers}")
    root = resolve_data_dir(data_dir)
    source = info.load(root, download)
    train_pool = source.pools["train"]
    if train_pool.labels.size == 0:
        raise InputError(f"dataset {name} in {root} has no training images")

    official_val, official_test = "val" in source.pools, "test" in source.pools
    for given, official, label in ((val_fraction, official_val, "val"), (test_fraction, official_test, "test")):
        if given is not None and official:
            logger.warning("%s has an official %s split; %s_fraction=%s is not used", name, label, label, given)
    val_fraction = None if official_val else (info.val_fraction if val_fraction is None else val_fraction)
    test_fraction = None if official_test else (info.test_fraction if test_fraction is None else test_fraction)
    _check_fractions(val_fraction, test_fraction)
    sizes = {"train": train_size, "val": val_size, "test": test_size}
    splits = _splits(name, source, val_fraction, test_fraction, sizes, seed)
    settings = {
        "name": name,
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "train_size": train_size,
        "val_size": val_size,
        "test_size": test_size,
    }
    module = CTDataModule(
        name,
        source,
        splits,
        input_spec=input_spec,
        settings=settings,
        batch_size=batch_size,
        num_workers=num_workers,
        augment=augment,
        cache=SplitCache(cache_dir) if cache else None,
    )
    logger.debug("%r from %s, fingerprint %s", module, source.location, module.fingerprint)
    return module


def _splits(
    name: str,
    source: Source,
    val_fraction: float | None,
    test_fraction: float | None,
    sizes: dict[str, int | None],
    seed: int,
) -> dict[str, tuple[str, np.ndarray]]:
    """Each split as (pool, indices into it): official pools as they are, the rest carved from the train pool
    by seeded stratified fractions, then the seeded stratified subsets ``sizes`` ask for."""
    carve = {}
    if test_fraction is not None:
        carve["test"] = test_fraction  # first, so the test split never depends on val_fraction
    if val_fraction is not None:
        carve["val"] = val_fraction
    parts = stratified_partition(source.pools["train"].labels, carve, seed=seed, salt="split", rest="train")
    splits: dict[str, tuple[str, np.ndarray]] = {"train": ("train", parts["train"])}
    for split in ("val", "test"):
        if split in source.pools:
            splits[split] = (split, np.arange(source.pools[split].labels.size, dtype=np.int64))
        else:
            splits[split] = ("train", parts[split])
    for split, size in sizes.items():
        if size is None:
            continue
        if size < 1:
            raise InputError(f"{split}_size must be at least 1, not {size}")
        pool, indices = splits[split]
        labels = source.pools[pool].labels[indices]
        splits[split] = (pool, stratified_subset(indices, labels, size, seed=seed, salt=f"subset:{split}"))
    for split in SPLITS:
        if splits[split][1].size == 0:
            raise InputError(f"dataset {name}: the {split} split is empty; use larger fractions or sizes")
    return splits


def _check_fractions(val_fraction: float | None, test_fraction: float | None) -> None:
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise InputError(f"val fraction must be between 0 and 1, not {val_fraction}")
    if test_fraction is not None and not 0 < test_fraction < 1:
        raise InputError(f"test fraction must be between 0 and 1, not {test_fraction}")
    if (val_fraction or 0) + (test_fraction or 0) >= 1:
        raise InputError(f"val and test fractions ({val_fraction} + {test_fraction}) leave no training data")
