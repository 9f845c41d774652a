"""The per-machine cache of decoded splits: decoded, transformed and resized once, read by every process of
the machine (``pread``, ``ct_tune.data._samples.RowFile``), so the page cache holds one copy for all of a
machine's workers and no worker's memory grows with the dataset.

Layout: one folder per split under the cache folder, named ``<dataset>-<split>-<key>``; ``key`` hashes
what the rows depend on (the data's fingerprint, the split, the transform and its size, the source files'
sizes and times, the library versions that decode and resize). It holds ``x.bin`` (the rows, uint8 or
float32, see ``ct_tune.data._samples``), ``y.npy`` (int64 labels) and ``meta.json`` (what was hashed, the
shape, the encoding, the fingerprint of the values). Measured 2026-12-04 on 2,000 + 500 RGB images at
224x224: 301 + 75 MB as uint8 (float32 would be 1,204 + 301 MB in every worker).

- Where: ``data.cache_dir`` > ``$CT_TUNE_CACHE`` > ``$XDG_CACHE_HOME/ct-tune/splits`` (``~/.cache/...``),
  beside the default data folder rather than inside it: a data folder may be the user's own ImageFolder,
  where a cache folder would read as a class. ``ct-tune cache`` lists and clears it.
- Writing is all-or-nothing: one process at a time per entry (an ``flock`` on ``<entry>.lock``, released by
  the kernel if the writer dies) writes into a temporary folder and renames it into place when complete.
  The next writer removes what a killed one left. Readers never see a partial entry.
- An entry whose files do not match its ``meta.json`` (a truncated copy, another format) is rebuilt.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ct_tune._errors import InputError
from ct_tune.data._samples import ENCODINGS, Encoding, RowFile, Samples, decode, eight_bit

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CACHE_ENV",
    "CacheEntry",
    "MemoryWriter",
    "SplitCache",
    "SplitWriter",
    "default_cache_dir",
    "values_fingerprint",
]

logger = logging.getLogger(__name__)

CACHE_ENV = "CT_TUNE_CACHE"
FORMAT = 1  # the layout of an entry; part of every key
_QUANTUM = 1024.0  # value fingerprints round samples to 1/1024 (float noise between machines does not count)
_FIX = "set data.cache_dir (or CT_TUNE_CACHE) to another folder, or data.cache: false to decode in every process"


def default_cache_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "ct-tune" / "splits"


def values_fingerprint(shape: tuple[int, ...], chunks: Iterator[Tensor], y: Tensor) -> str:
    """Hash of the values rounded to 1/1024 and the labels: equal for equal data read in any chunking."""
    digest = hashlib.sha256()
    digest.update(f"{tuple(shape)}|".encode())
    for x in chunks:
        digest.update(np.ascontiguousarray(torch.round(x.double() * _QUANTUM).to(torch.int64).numpy()).tobytes())
    digest.update(np.ascontiguousarray(y.to(torch.int64).numpy()).tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class CacheEntry:
    """One split in the cache: its folder and what ``meta.json`` says of it."""

    folder: Path
    meta: Mapping[str, Any]

    @property
    def samples(self) -> Samples:
        """The rows, read from the file a batch at a time (the page cache holds them, no process maps them)."""
        dtype = torch.uint8 if self.meta["encoding"] != "float32" else torch.float32
        return Samples(RowFile(self.folder / "x.bin", dtype, tuple(self.meta["shape"])), self.meta["encoding"])

    @property
    def labels(self) -> Tensor:
        return torch.from_numpy(np.load(self.folder / "y.npy"))

    @property
    def fingerprint(self) -> str:
        return str(self.meta["fingerprint"])

    @property
    def megabytes(self) -> float:
        return int(self.meta["bytes"]) / 2**20

    def intact(self) -> bool:
        """The files are there and as long as ``meta.json`` says (a truncated copy is not)."""
        x, y = self.folder / "x.bin", self.folder / "y.npy"
        return x.is_file() and y.is_file() and x.stat().st_size == int(self.meta.get("bytes", -1))


class SplitWriter:
    """Appends decoded batches to a temporary entry: uint8 while every batch is exactly 8-bit, float32 from
    the first one that is not (the rows written so far are converted, losslessly)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.encoding: Encoding | None = None
        self.shape: tuple[int, ...] | None = None
        self.rows = 0
        self._labels: list[Tensor] = []
        self._file = open(folder / "x.bin", "wb")  # noqa: SIM115 (closed by finish)

    def append(self, x: Tensor, y: Tensor) -> None:
        x = x.detach().cpu().contiguous()
        if self.shape is None:
            self.shape = tuple(x.shape[1:])
        elif tuple(x.shape[1:]) != self.shape:
            raise InputError(
                f"batches of one split have different sample shapes: {self.shape} and {tuple(x.shape[1:])}"
            )
        packed = None
        if self.encoding != "float32":
            packed = eight_bit(x, (self.encoding,) if self.encoding else ENCODINGS[:2])
            if packed is None and self.encoding is not None:
                self._widen()
        if packed is None:
            self.encoding = "float32"
            self._file.write(x.to(torch.float32).numpy().tobytes())
        else:
            self.encoding = packed[0]
            self._file.write(packed[1].numpy().tobytes())
        self._labels.append(y.detach().cpu().to(torch.int64))
        self.rows += len(x)

    def _widen(self) -> None:
        """Rewrite the uint8 rows written so far as float32 (a later batch is not 8-bit)."""
        assert self.encoding is not None and self.shape is not None
        self._file.close()
        narrow = self.folder / "x.bin"
        wide = self.folder / "x.f32"
        stored = np.memmap(narrow, dtype=np.uint8, mode="r", shape=(self.rows, *self.shape))
        with open(wide, "wb") as out:
            for start in range(0, self.rows, 256):
                out.write(
                    decode(torch.from_numpy(np.array(stored[start : start + 256])), self.encoding).numpy().tobytes()
                )
        del stored
        os.replace(wide, narrow)
        self._file = open(narrow, "ab")  # noqa: SIM115
        self.encoding = "float32"

    def finish(self) -> tuple[Samples, Tensor]:
        """Close the file: the rows (read from it) and the labels."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        labels = torch.cat(self._labels) if self._labels else torch.empty(0, dtype=torch.int64)
        np.save(self.folder / "y.npy", labels.numpy())
        return self.mapped(), labels

    def mapped(self) -> Samples:
        assert self.encoding is not None and self.shape is not None
        dtype = torch.uint8 if self.encoding != "float32" else torch.float32
        return Samples(RowFile(self.folder / "x.bin", dtype, (self.rows, *self.shape)), self.encoding)

    def abandon(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()


class MemoryWriter:
    """What a split decodes into without a cache: float32 rows in this process's memory."""

    def __init__(self) -> None:
        self.xs: list[Tensor] = []
        self.ys: list[Tensor] = []

    def append(self, x: Tensor, y: Tensor) -> None:
        self.xs.append(x.detach().cpu().to(torch.float32))
        self.ys.append(y.detach().cpu().to(torch.int64))

    @property
    def rows(self) -> int:
        return sum(len(y) for y in self.ys)

    def finish(self) -> tuple[Samples, Tensor]:
        return Samples(torch.cat(self.xs)), torch.cat(self.ys)


class SplitCache:
    """The cache folder: find an entry, or build it once (under a lock) and find it after."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        chosen = root if root not in (None, "") else os.environ.get(CACHE_ENV) or default_cache_dir()
        self.root = Path(chosen).expanduser().resolve()

    @staticmethod
    def key(descriptor: Mapping[str, Any]) -> str:
        text = json.dumps({"format": FORMAT, **descriptor}, sort_keys=True, default=repr)
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def folder(self, label: str, descriptor: Mapping[str, Any]) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)[:60]
        return self.root / f"{safe}-{self.key(descriptor)}"

    def find(self, folder: Path, descriptor: Mapping[str, Any], *, fingerprint: str | None = None) -> CacheEntry | None:
        """The complete entry in ``folder`` made from ``descriptor`` (and holding values of ``fingerprint``),
        or None: absent, or not what its name promises (then it is rebuilt)."""
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        entry = CacheEntry(folder, meta)
        made_from = json.dumps(meta.get("descriptor"), sort_keys=True, default=repr)
        if (
            meta.get("format") != FORMAT
            or made_from != json.dumps(dict(descriptor), sort_keys=True, default=repr)
            or (fingerprint is not None and meta.get("fingerprint") != fingerprint)
            or not entry.intact()
        ):
            logger.warning("data cache %s does not match what it is named for: rebuilding it", folder)
            return None
        return entry

    @contextlib.contextmanager
    def locked(self, name: str) -> Iterator[None]:
        """One writer at a time for ``name`` (on this machine, and across machines where the file system
        supports ``flock``); a killed holder releases it."""
        self.check_writable()
        path = self.root / f"{name}.lock"
        with _cache_errors(self.root), open(path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("waiting for another process writing %s", self.root / name)
                started = time.perf_counter()
                fcntl.flock(handle, fcntl.LOCK_EX)
                logger.info("waited %.1f s for %s", time.perf_counter() - started, self.root / name)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def build(
        self, label: str, descriptor: Mapping[str, Any], fill: Callable[[SplitWriter], None], *, by_values: bool = False
    ) -> CacheEntry:
        """Decode into a temporary folder with ``fill`` and rename it into place; the caller holds the lock.
        ``by_values``: the entry is named by the values' fingerprint too (data that can only be known by
        reading it); an entry already holding the same values is kept. Nothing is left behind on failure."""
        prefix = f".{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)[:60]}-{self.key(descriptor)}.tmp-"
        for stale in self.root.glob(prefix + "*"):  # left by a killed writer (the lock says none is alive)
            shutil.rmtree(stale, ignore_errors=True)
        temporary = self.root / f"{prefix}{os.getpid()}"
        writer: SplitWriter | None = None
        try:
            with _cache_errors(self.root):
                temporary.mkdir(parents=True)
                writer = SplitWriter(temporary)
                started = time.perf_counter()
                fill(writer)
                if not writer.rows:
                    raise InputError(f"{label}: the split yielded no samples")
                samples, labels = writer.finish()
                fingerprint = values_fingerprint(tuple(samples.shape), _chunks(samples), labels)
                final = {**descriptor, "fingerprint": fingerprint} if by_values else dict(descriptor)
                target = self.folder(label, final)
                meta = {
                    "format": FORMAT,
                    "descriptor": final,
                    "label": label,
                    "shape": list(samples.shape),
                    "encoding": samples.encoding,
                    "bytes": samples.nbytes,
                    "fingerprint": fingerprint,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "seconds": round(time.perf_counter() - started, 2),
                }
                del samples
                existing = self.find(target, final) if by_values else None
                if existing is not None:
                    shutil.rmtree(temporary)
                    return existing
                (temporary / "meta.json").write_text(json.dumps(meta, indent=1, default=repr))
                if target.exists():  # not intact, or another format: replaced
                    shutil.rmtree(target)
                os.rename(temporary, target)
        except BaseException:
            if writer is not None:
                writer.abandon()
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        entry = CacheEntry(target, meta)
        logger.info(
            "cached %s: %s %s (%.0f MB) in %.1f s",
            target.name,
            meta["shape"],
            meta["encoding"],
            entry.megabytes,
            meta["seconds"],
        )
        return entry

    def entries(self) -> list[CacheEntry]:
        """Every complete entry, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for path in sorted(self.root.iterdir()):
            with contextlib.suppress(OSError, ValueError):
                meta = json.loads((path / "meta.json").read_text())
                found.append(CacheEntry(path, meta))
        return sorted(found, key=lambda e: str(e.meta.get("created", "")))

    def clear(self) -> tuple[int, float]:
        """Remove every entry not being written right now: (entries removed, MB freed). Processes that have
        an entry open keep reading it (the kernel keeps a removed file alive while it is open)."""
        removed, freed = 0, 0.0
        if not self.root.is_dir():
            return removed, freed
        for path in sorted(self.root.iterdir()):
            if path.suffix == ".lock" or not path.is_dir():
                continue
            name = path.name.lstrip(".").split(".tmp-")[0]
            with open(self.root / f"{name}.lock", "a") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # being written
                size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                shutil.rmtree(path, ignore_errors=True)
                removed, freed = removed + 1, freed + size / 2**20
        return removed, freed

    def check_writable(self) -> None:
        """Refuse, in one line, a cache folder this process could not write an entry into."""
        with _cache_errors(self.root):
            self.root.mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "not writable", str(self.root))


def _chunks(samples: Samples, size: int = 16) -> Iterator[Tensor]:
    """The rows a few at a time: the fingerprint holds each chunk three times over (float32, float64, int64),
    which at 256 rows of 3x224x224 was 740 MiB on top of a writer's peak; the hash does not depend on it."""
    for start in range(0, len(samples), size):
        yield samples[start : start + size]


@contextlib.contextmanager
def _cache_errors(root: Path) -> Iterator[None]:
    """A cache folder that cannot be written becomes one line naming it and the setting to change."""
    try:
        yield
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise InputError(f"no space left for the data cache {root} ({error.strerror}); {_FIX}") from None
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST):
            raise InputError(f"the data cache folder {root} is not writable; {_FIX}") from None
        raise
