"""A split's inputs as an evaluation reads them: rows by slice or index, float32 pixels on the device.

The rows are stored compactly (in a cache file, or in memory) and decoded one batch at a time, so a worker
never holds a split as one float32 tensor on its device. A cache file is read with ``pread``
(:class:`RowFile`), not mapped: its pages live in the kernel's page cache, one copy for every process of the
machine, and count in no process's memory, so a worker's memory does not grow with the dataset (a mapped
file's pages count in each process that touched them: +376 MB per worker at 2,500 images of 224x224).

- 8-bit images are stored as ``uint8`` and decoded on the device with the very operation that made the
  float pixels (torchvision's ``ToDtype`` multiplies by ``1/255``; ``ToTensor`` divides by 255; the two
  differ in the last bit for 126 of the 256 values), so a decoded batch is bit-identical to the loader's.
  4x smaller than float32: 2,000 images at 224x224 are 301 MB instead of 1,204 MB.
- Anything else (normalised data, float datasets, resampled floats) is stored as the float32 it was scored
  as, exactly.

On CUDA a batch is copied from pinned memory without blocking; a compact split that fits
``run.data_on_gpu_mb`` is moved to the GPU once and decoded there batch by batch.
"""

from __future__ import annotations

import math
import os
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["ENCODINGS", "Encoding", "RowFile", "Samples", "decode", "eight_bit"]

Encoding = Literal["u8*1/255", "u8/255", "float32"]
ENCODINGS: tuple[Encoding, ...] = ("u8*1/255", "u8/255", "float32")


def decode(stored: Tensor, encoding: Encoding) -> Tensor:
    """Stored rows back to the float32 pixels they were made from (a new tensor)."""
    if encoding == "u8*1/255":
        return stored.to(torch.float32).mul_(1.0 / 255)
    if encoding == "u8/255":
        return stored.to(torch.float32).div_(255)
    return stored.to(torch.float32, copy=True)


def eight_bit(x: Tensor, encodings: tuple[Encoding, ...] = ENCODINGS[:2]) -> tuple[Encoding, Tensor] | None:
    """``(encoding, uint8 rows)`` when one of ``encodings`` decodes back to exactly ``x`` (every bit,
    signed zeros and all), else None: the test a batch passes to be stored in 8 bits."""
    if x.dtype != torch.float32 or not x.numel():
        return None
    levels = torch.round(x * 255)
    if not bool(((levels >= 0) & (levels <= 255)).all()):  # NaN fails too
        return None
    stored = levels.to(torch.uint8)
    exact = x.view(torch.int32)
    for encoding in encodings:
        if torch.equal(decode(stored, encoding).view(torch.int32), exact):
            return encoding, stored
    return None


class RowFile:
    """The rows of a cache file, read with ``pread`` into a fresh CPU tensor: ``rows[slice]``,
    ``rows[index_tensor]``, ``len``, ``shape``, ``dtype``; ``to(device)`` reads them all."""

    def __init__(self, path: str | os.PathLike[str], dtype: torch.dtype, shape: tuple[int, ...]) -> None:
        self.path = os.fspath(path)
        self.dtype = dtype
        self.shape = torch.Size(shape)
        self.device = torch.device("cpu")
        self.row_bytes = math.prod(shape[1:]) * dtype.itemsize
        self._fd: int | None = os.open(self.path, os.O_RDONLY)  # open now: a cleared cache stays readable

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}  # a descriptor is this process's own

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)

    def _read(self, first: int, count: int, into: np.ndarray) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        view, offset = memoryview(into).cast("B"), first * self.row_bytes
        while len(view):
            done = os.preadv(self._fd, [view], offset)
            if done <= 0:
                raise OSError(f"{self.path}: the file ends before row {first + count}")
            view, offset = view[done:], offset + done

    def __getitem__(self, rows: slice | Tensor) -> Tensor:
        numpy_dtype = torch.empty(0, dtype=self.dtype).numpy().dtype
        if isinstance(rows, slice):
            first, stop, step = rows.indices(len(self))
            count = max(0, stop - first)
            out = np.empty((count, *self.shape[1:]), dtype=numpy_dtype)
            if count:
                self._read(first, count, out)
            result = torch.from_numpy(out)
            return result[::step] if step != 1 else result
        index = rows.cpu().reshape(-1).tolist()
        out = np.empty((len(index), *self.shape[1:]), dtype=numpy_dtype)
        for position, row in enumerate(index):
            self._read(int(row), 1, out[position : position + 1])
        return torch.from_numpy(out)

    def to(self, device: torch.device | str) -> Tensor:
        return self[0 : len(self)].to(device)

    def cpu(self) -> RowFile:
        return self


class Samples:
    """The rows of one split: ``len``, ``shape``, and ``samples[rows]`` (a slice or an index tensor) as
    float32 on ``device``. Read-only: what it returns is a fresh tensor, never a view of the store."""

    def __init__(
        self, stored: Tensor | RowFile, encoding: Encoding = "float32", device: torch.device | str = "cpu"
    ) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}")
        self.stored = stored
        self.encoding: Encoding = encoding
        self.device = torch.device(device)

    def __len__(self) -> int:
        return int(self.stored.shape[0])

    @property
    def shape(self) -> torch.Size:
        return self.stored.shape

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.stored.dtype.itemsize

    @property
    def resident(self) -> bool:
        """Whether the stored rows are on the device already (decoded there, no copy per batch)."""
        return self.stored.device == self.device

    def __getitem__(self, rows: slice | Tensor) -> Tensor:
        if isinstance(rows, Tensor):
            rows = rows.to(self.stored.device)
        part = self.stored[rows]
        if part.device != self.device:
            if self.device.type == "cuda":
                part = part.pin_memory().to(self.device, non_blocking=True)
            else:
                part = part.to(self.device)
        return decode(part, self.encoding)

    def on(self, device: torch.device | str, *, resident_mb: float = 0) -> Samples:
        """The same rows served on ``device``; on CUDA kept there (compact) when they fit ``resident_mb``."""
        device = torch.device(device)
        stored = self.stored
        if device.type == "cuda" and self.nbytes <= resident_mb * 2**20:
            stored = stored.to(device)
        elif stored.device.type != "cpu":
            stored = stored.cpu()
        return Samples(stored, self.encoding, device)

    def all(self, *, chunk: int = 256) -> Tensor:
        """Every row decoded into one float32 tensor on the device (what ``tensors()`` hands out)."""
        out = torch.empty(tuple(self.shape), dtype=torch.float32, device=self.device)
        for start in range(0, len(self), chunk):
            out[start : start + chunk] = self[start : start + chunk]
        return out

    def value_range(self, *, chunk: int = 256) -> tuple[float, float]:
        """(min, max) of the decoded values, read a chunk at a time."""
        lows, highs = [], []
        for start in range(0, len(self), chunk):
            part = self[start : start + chunk]
            lows.append(float(part.min()))
            highs.append(float(part.max()))
        return min(lows), max(highs)

    def __repr__(self) -> str:
        where = "resident" if self.resident else "streamed"
        return f"Samples({tuple(self.shape)}, {self.encoding}, {where} on {self.device}, {self.nbytes / 2**20:.0f} MB)"
