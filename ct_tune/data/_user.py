"""The user's own data: a ``LightningDataModule`` named by ``class_path`` + ``init_args`` (LightningCLI's
convention), or one ``torch.utils.data.Dataset`` class per split.

The contract ct-tune keeps with a DataModule, and enforces with one-line errors:

- ``prepare_data()`` runs once per machine: in the process that creates a study and in every launch, before
  its workers start (downloads, unpacking). Workers build their own instance and never call it.
- ``setup("fit")`` then ``train_dataloader()`` (only when a probe objective needs train features) and
  ``val_dataloader()`` (what every trial scores). ``setup("test")`` and ``test_dataloader()`` only inside
  ``Study.report``: nothing else ever reads the test split.
- A batch is an ``(x, y)`` tuple or list (more items are ignored), or a dict whose keys the spec names
  (``data.batch_keys: {input: image, target: label}``). ``x`` is a float tensor with the batch first,
  ``y`` holds integer class indices.
- Input range: adversarial budgets are in pixel units. Either the loaders serve pixels in [0, 1] and the
  model normalises, or they serve their own normalised space and the spec declares it
  (``data.normalization: {mean: [...], std: [...]}``, per channel): ct-tune maps the samples back to
  pixels, attacks there, and normalises in front of the network.
- The val loader must not shuffle (every trial scores the same samples in the same order). The train
  loader is read once per process with the spec's seed fixed, so any random augmentation gives every
  worker the same samples (a probe is better fitted on unaugmented data).

Each split is read once per machine into the machine's cache (``ct_tune.data._cache``; 8-bit images in 8
bits) and read from there by every process, and fingerprinted (a hash of the samples and labels, rounded to
1/1024 so that float noise between machines does not count): a study records the fingerprints it was
created with and a worker whose data differs refuses to run. The processes that run ``prepare_data`` (create,
launch, report) always read the loaders afresh, so edited files are seen; the workers a launch starts map
the entry holding the values the study recorded, and read the loaders only where the machine has none.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from ct_tune._classpath import import_class, instantiate, one_line
from ct_tune._errors import InputError
from ct_tune.data._cache import MemoryWriter, SplitCache, SplitWriter, values_fingerprint
from ct_tune.data._samples import Samples

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler

__all__ = ["ComponentSpec", "UserData"]

logger = logging.getLogger(__name__)

Split = Literal["train", "val", "test"]


@dataclass(frozen=True)
class ComponentSpec:
    """A class named by ``class_path`` (``package.module.Class``) and the keyword arguments it is built with."""

    class_path: str
    init_args: Mapping[str, Any]


class UserData:
    """The user's data behind the interface a study reads (``tensors``, ``num_classes``, ``fingerprint``)."""

    def __init__(
        self,
        *,
        datamodule: Any = None,
        datasets: Mapping[str, Dataset] | None = None,
        label: str,
        batch_size: int = 256,
        batch_keys: tuple[str, str] | None = None,
        normalization: tuple[Sequence[float], Sequence[float]] | None = None,
        num_classes: int | None = None,
        sizes: Mapping[str, int | None] | None = None,
        seed: int = 0,
        cache: SplitCache | None = None,
        source: Mapping[str, Any] | None = None,
        known: Mapping[str, str] | None = None,
        fresh: bool = True,
    ) -> None:
        if (datamodule is None) == (datasets is None):
            raise ValueError("give a datamodule or datasets")
        self.datamodule = datamodule
        self.datasets = dict(datasets or {})
        self.name = label
        self.batch_size = batch_size
        self.batch_keys = batch_keys
        self.normalization = normalization
        self._num_classes = num_classes
        self._declared_classes = num_classes  # data.num_classes: the labels are checked against it
        self.sizes_limit = dict(sizes or {})
        self.seed = seed
        self.cache = cache  # None: every process reads the loaders into its memory
        self.source = dict(source or {"label": label})  # what the cache key says the data came from
        self.known = dict(known or {})  # the fingerprints a study recorded: map the cache entry holding them
        self.fresh = fresh  # read the loaders even where the cache has the values (edited files are seen)
        self._stage_done: set[str] = set()
        self._pixels: dict[str, tuple[Samples, Tensor]] = {}  # per split, on the CPU
        self._cache: dict[tuple[Any, ...], tuple[Tensor, Tensor]] = {}
        self.fingerprints: dict[str, str] = {}

    # ----------------------------------------------------------------------------------------- building
    @classmethod
    def from_datamodule(cls, component: ComponentSpec, *, prepare: bool, **settings: Any) -> UserData:
        import lightning as L

        found = import_class(component.class_path, what="data.class_path")
        if not issubclass(found, L.LightningDataModule):
            hint = "; for Dataset classes use data.train / data.val / data.test" if issubclass(found, Dataset) else ""
            raise InputError(
                f"data.class_path {component.class_path!r} is not a LightningDataModule "
                f"(it is a {_kind_of(found)}){hint}"
            )
        if found.val_dataloader is L.LightningDataModule.val_dataloader:
            raise InputError(
                f"{found.__name__} has no val_dataloader: ct-tune scores every trial on the val split; implement "
                "val_dataloader (held-out data, not the test set)"
            )
        module = instantiate(found, component.init_args, what="data")
        if prepare:
            _call(module.prepare_data, f"{found.__name__}.prepare_data()")
        source = {"class_path": component.class_path, "init_args": dict(component.init_args)}
        return cls(datamodule=module, label=component.class_path, source=source, fresh=prepare, **settings)

    @classmethod
    def from_datasets(cls, components: Mapping[str, ComponentSpec], **settings: Any) -> UserData:
        if "val" not in components:
            raise InputError("data: Dataset classes need at least val (and train for a probe, test for a report)")
        datasets = {}
        for split, component in components.items():
            found = import_class(component.class_path, what=f"data.{split}.class_path")
            if not issubclass(found, Dataset):
                raise InputError(
                    f"data.{split}.class_path {component.class_path!r} is not a torch.utils.data.Dataset "
                    f"(it is a {_kind_of(found)})"
                )
            datasets[split] = instantiate(found, component.init_args, what=f"data.{split}")
        label = components["val"].class_path
        source = {
            split: {"class_path": c.class_path, "init_args": dict(c.init_args)} for split, c in components.items()
        }
        return cls(datasets=datasets, label=label, source=source, **settings)

    # ----------------------------------------------------------------------------------------- what it holds
    @property
    def num_classes(self) -> int:
        """Declared (``data.num_classes``, or the DataModule's ``num_classes``), else one more than the largest
        label of the splits read so far."""
        if self._num_classes is None:
            declared = getattr(self.datamodule, "num_classes", None)
            if isinstance(declared, int) and declared > 0:
                self._num_classes = declared
            else:
                _, y = self._split("val")
                labels = [y] + ([self._pixels["train"][1]] if "train" in self._pixels else [])
                self._num_classes = int(max(int(t.max()) for t in labels)) + 1
        return self._num_classes

    @property
    def classes(self) -> list[str] | None:
        names = getattr(self.datamodule, "classes", None) or getattr(self.datasets.get("val"), "classes", None)
        return list(names) if isinstance(names, Sequence) and not isinstance(names, str) else None

    @property
    def native_channels(self) -> int:
        x, _ = self._split("val")
        return int(x.shape[1]) if len(x.shape) >= 2 else 1

    def example_input(self, device: torch.device) -> Tensor:
        """One val sample as a batch of one, in the space the network is fed (pixels: normalise first)."""
        x, _ = self._split("val")
        return x[:1].to(device)  # decoded on the CPU

    @property
    def fingerprint(self) -> str:
        """What a study records: the fingerprints of the splits read so far (val always)."""
        self._split("val")
        return ",".join(f"{split}:{value}" for split, value in sorted(self.fingerprints.items()) if split != "test")

    def describe(self) -> dict[str, Any]:
        x, _ = self._split("val")
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "fingerprints": dict(self.fingerprints),
            "sizes": {split: int(t[1].numel()) for split, t in self._pixels.items()},
            "num_classes": self.num_classes,
            "sample_shape": list(x.shape[1:]),
            "normalization": None
            if self.normalization is None
            else {"mean": list(self.normalization[0]), "std": list(self.normalization[1])},
            "source": "datamodule" if self.datamodule is not None else "datasets",
            "class_paths": self.class_paths(),
        }

    def class_paths(self) -> dict[str, str]:
        """The class each split is read from (the DataModule's for all three), without its arguments: what
        MLflow shows as the data's source (arguments may hold a token or a password)."""
        if "class_path" in self.source:
            return dict.fromkeys(("train", "val", "test"), str(self.source["class_path"]))
        return {split: str(part["class_path"]) for split, part in self.source.items() if isinstance(part, Mapping)}

    def normalizer(self) -> Callable[[Tensor], Tensor] | None:
        """Pixels back to the space the loaders served (None: they served pixels)."""
        if self.normalization is None:
            return None
        mean, std = self.normalization
        return _Normalize(mean, std)

    def check_pixel_range(self, split: Split = "val") -> None:
        """Adversarial objectives need pixels in [0, 1]: refuse data that is not, in one line."""
        x, _ = self._split(split)
        low, high = x.value_range()
        if low < -1e-3 or high > 1 + 1e-3:
            where = "after undoing data.normalization" if self.normalization else "as the loaders serve them"
            raise InputError(
                f"{split} inputs range over [{low:.3g}, {high:.3g}] {where}, not pixels in [0, 1]; adversarial "
                "budgets (eps) are in pixel units: serve pixels and normalise in the model, or declare the "
                "normalisation your transforms apply (data.normalization: {mean: [...], std: [...]})"
            )

    # ----------------------------------------------------------------------------------------- tensors
    def samples(
        self, split: Split, *, device: torch.device | str | None = None, resident_mb: float = 0
    ) -> tuple[Samples, Tensor]:
        """``(x, y)`` of a split in pixel space: rows served a batch at a time on ``device`` (``x[rows]``)."""
        device = torch.device(device) if device is not None else torch.device("cpu")
        x, y = self._split(split)
        return x.on(device, resident_mb=resident_mb), y.to(device)

    def tensors(
        self,
        split: Split,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        limit: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(x, y)`` of a split in pixel space as whole tensors (the test split only when asked)."""
        device = torch.device(device) if device is not None else torch.device("cpu")
        key = (split, limit, str(device), dtype)
        if key not in self._cache:
            x, y = self.samples(split, device=device)
            rows = slice(0, limit)
            with torch.inference_mode(False), torch.no_grad():
                self._cache[key] = (x[rows].to(dtype or torch.float32), y[rows])
        return self._cache[key]

    def _split(self, split: Split) -> tuple[Samples, Tensor]:
        if split not in self._pixels:
            started = time.perf_counter()
            if self.cache is None:
                writer = MemoryWriter()
                self._fill(writer, split)
                x, y = writer.finish()
                self.fingerprints[split] = values_fingerprint(tuple(x.shape), iter([x.stored]), y)
            else:
                entry = self._cached(split)
                x, y = entry.samples, entry.labels
                self.fingerprints[split] = entry.fingerprint
            self._pixels[split] = (x, y)
            logger.info(
                "%s %s: %d samples %s as %s in %.1f s",
                self.name,
                split,
                len(y),
                tuple(x.shape[1:]),
                x.encoding,
                time.perf_counter() - started,
            )
        return self._pixels[split]

    def _check_labels(self, y: Tensor, what: str, *, first: int) -> None:
        """Labels are class indices: none negative, none past the classes declared (an undeclared count is
        one more than the largest label, and the model's logits are checked against it)."""
        declared = self._declared_classes or getattr(self.datamodule, "num_classes", None)
        top = declared if isinstance(declared, int) and declared > 0 else None
        bad = (y < 0) | (y >= top) if top is not None else y < 0
        if bool(bad.any()):
            index = int(bad.nonzero()[0, 0])
            label = int(y[index])
            classes = (
                f"the {top} classes (0 to {top - 1}) the data declares" if top else "the class indices (0 or more)"
            )
            raise InputError(
                f"{what}: sample {first + index} has label {label}, outside {classes}; fix the labels"
                + (" or data.num_classes" if top else "")
            )

    def _cached(self, split: Split) -> Any:
        """The cache entry of a split: the one holding the recorded values when this process trusts the
        cache, else read from the loaders (under the lock, so one process of the machine reads at a time)."""
        assert self.cache is not None
        descriptor = {
            "kind": "user",
            "source": self.source,
            "split": split,
            "limit": self.sizes_limit.get(split),
            "seed": self.seed,
            "batch_keys": self.batch_keys,
            "normalization": self.normalization,
        }
        label = f"{self.name.rsplit('.', 1)[-1]}-{split}"
        known = None if self.fresh else self.known.get(split)
        keyed = {**descriptor, "fingerprint": known}
        found = self.cache.find(self.cache.folder(label, keyed), keyed, fingerprint=known) if known else None
        if found is not None:
            return found
        with self.cache.locked(self.cache.folder(label, descriptor).name):
            found = self.cache.find(self.cache.folder(label, keyed), keyed, fingerprint=known) if known else None
            return found or self.cache.build(
                label, descriptor, lambda writer: self._fill(writer, split), by_values=True
            )

    def _fill(self, writer: SplitWriter | MemoryWriter, split: Split) -> None:
        """The split's batches, as the loader serves them, into ``writer`` (pixels, float32 where they were
        half or double precision), stopping at the spec's size."""
        loader = self._loader(split)
        what = f"{self._owner()} {split} batches"
        limit = self.sizes_limit.get(split)
        with _seeded(self.seed), torch.no_grad():
            for batch in _batches(loader, what):
                x, y = self._unpack(batch, what)
                if limit is not None:
                    x, y = x[: limit - writer.rows], y[: limit - writer.rows]
                x = x.detach().cpu()
                x = x.float() if x.dtype in (torch.float16, torch.bfloat16, torch.float64) else x
                if self.normalization is not None:
                    x = _denormalize(x, *self.normalization, split=split)
                y = y.detach().cpu().long()
                _check_finite(x, what, first=writer.rows)
                self._check_labels(y, what, first=writer.rows)
                writer.append(x, y)
                if limit is not None and writer.rows >= limit:
                    break
        if not writer.rows:
            raise InputError(f"{what}: the {split} loader yielded no batch; check the {split} split")

    def _loader(self, split: Split) -> Iterable[Any]:
        if self.datamodule is None:
            dataset = self.datasets.get(split)
            if dataset is None:
                needed = "a probe objective" if split == "train" else "report"
                raise InputError(f"data: no {split} Dataset given (data.{split}); {needed} needs one")
            return DataLoader(dataset, batch_size=self.batch_size, shuffle=False)
        import lightning as L

        module = self.datamodule
        stage = "test" if split == "test" else "fit"
        if stage not in self._stage_done:
            _call(lambda: module.setup(stage), f"{type(module).__name__}.setup({stage!r})")
            self._stage_done.add(stage)
        method = getattr(type(module), f"{split}_dataloader")
        if method is getattr(L.LightningDataModule, f"{split}_dataloader"):
            needed = {"train": "the probe objective fits on it", "test": "report scores on it"}.get(split, "")
            raise InputError(f"{type(module).__name__} has no {split}_dataloader; {needed}: implement it")
        loader = _call(getattr(module, f"{split}_dataloader"), f"{type(module).__name__}.{split}_dataloader()")
        if isinstance(loader, (list, tuple, dict)):
            raise InputError(
                f"{type(module).__name__}.{split}_dataloader() returns {len(loader)} loaders; ct-tune reads one "
                "per split: return a single DataLoader"
            )
        if split != "train" and isinstance(getattr(loader, "sampler", None), RandomSampler):
            raise InputError(
                f"{type(module).__name__}.{split}_dataloader() shuffles; every trial must score the same samples "
                "in the same order: use shuffle=False"
            )
        return loader

    def _unpack(self, batch: Any, what: str) -> tuple[Tensor, Tensor]:
        if isinstance(batch, Mapping):
            if self.batch_keys is None:
                raise InputError(
                    f"{what} are dicts with keys {sorted(map(str, batch))}; name the input and the label in the "
                    "spec: data.batch_keys: {input: <key>, target: <key>}"
                )
            missing = [key for key in self.batch_keys if key not in batch]
            if missing:
                raise InputError(
                    f"{what} have no key {missing[0]!r} (data.batch_keys); they have {sorted(map(str, batch))}"
                )
            x, y = batch[self.batch_keys[0]], batch[self.batch_keys[1]]
        elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
            x, y = batch[0], batch[1]
        else:
            kind = f"a {type(batch).__name__}" + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "")
            raise InputError(
                f"{what} are {kind}; ct-tune takes (x, y) tuples, or dicts with data.batch_keys naming x and y"
            )
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 1:
            raise InputError(
                f"{what}: the input is {_describe(x)}; it must be a float tensor with the batch first "
                "(a transform such as ToTensor/ToDtype is missing?)"
            )
        if not isinstance(y, Tensor):
            y = torch.as_tensor(y)
        if y.dtype.is_floating_point or y.dtype == torch.bool or y.dim() != 1 or len(y) != len(x):
            raise InputError(
                f"{what}: the target is {_describe(y)} for {len(x)} inputs; it must hold one integer class index "
                "per sample (not one-hot or soft labels)"
            )
        return x, y

    def _owner(self) -> str:
        return type(self.datamodule).__name__ if self.datamodule is not None else "the datasets'"

    def __repr__(self) -> str:
        return f"UserData({self.name}, splits read: {sorted(self._pixels)})"


class _Normalize:
    """``(x - mean) / std`` per channel (dimension 1), made once per device and dtype."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self._tensors: dict[tuple[Any, ...], tuple[Tensor, Tensor]] = {}

    def __call__(self, x: Tensor) -> Tensor:
        key = (x.device, x.dtype, x.dim())
        if key not in self._tensors:
            shape = (1, len(self.mean)) + (1,) * (x.dim() - 2)
            with torch.inference_mode(False):
                self._tensors[key] = (
                    torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(shape),
                    torch.tensor(self.std, device=x.device, dtype=x.dtype).view(shape),
                )
        mean, std = self._tensors[key]
        return (x - mean) / std


def _denormalize(x: Tensor, mean: Sequence[float], std: Sequence[float], *, split: str) -> Tensor:
    if x.dim() < 2 or x.shape[1] != len(mean):
        raise InputError(
            f"data.normalization gives {len(mean)} channel(s) but the {split} inputs have shape "
            f"{tuple(x.shape[1:])} (channels first); give one mean and std per channel"
        )
    shape = (1, len(mean)) + (1,) * (x.dim() - 2)
    return x * torch.tensor(std, dtype=x.dtype).view(shape) + torch.tensor(mean, dtype=x.dtype).view(shape)


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run a block with Python's, NumPy's and torch's generators seeded; the caller's states come back."""
    states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])


def _call(function: Callable[[], Any], label: str) -> Any:
    """Call a user hook; its failure becomes one line naming the hook (a user error, not ct-tune's)."""
    try:
        return function()
    except InputError:
        raise
    except Exception as error:
        raise InputError(f"{label} failed: {one_line(error)}") from None


def _batches(loader: Iterable[Any], label: str) -> Iterator[Any]:
    """The loader's batches; an error raised while it reads one (a Dataset's ``__getitem__``, a collate
    function, a worker process) becomes one line naming ``label``, as a failing hook does."""
    iterator = _call(lambda: iter(loader), label)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except InputError:
            raise
        except Exception as error:
            raise InputError(
                f"{label}: reading a batch failed: {one_line(error)}; fix the Dataset or DataLoader"
            ) from None
        yield batch


def _kind_of(cls: type) -> str:
    names = [base.__name__ for base in cls.__mro__[1:-1]]
    return f"class {cls.__name__}" + (f" ({', '.join(names[:3])})" if names else "")


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _check_finite(x: Tensor, what: str, *, first: int) -> None:
    """Refuse NaN or infinite inputs, naming the first such sample (``first`` is the batch's first row)."""
    if not x.is_floating_point():
        return
    finite = torch.isfinite(x.reshape(len(x), -1)).all(dim=1)
    if not bool(finite.all()):
        index = first + int((~finite).nonzero()[0, 0])
        raise InputError(
            f"{what}: sample {index} holds NaN or infinite values; ct-tune scores finite inputs only: fix the data "
            "or its transform"
        )
