"""Seeded, stratified splits that come out the same on every machine, process, worker and library version.

The order of a pool is fixed by a hash: each index gets the key ``splitmix64(stream(seed, salt) + index)``
and indices are sorted by key. splitmix64 is a fixed bijection on 64-bit integers written out here in
numpy's wrapping uint64 arithmetic, so nothing depends on a random-number generator's stream (numpy does not
promise ``Generator`` streams across versions) or on Python's per-process hash seed.

Stratification allocates a total over classes by largest remainder (Hamilton's method): each class gets
``floor(total * n_c / N)`` and the leftover goes to the largest fractional parts, ties to the lower label.
Within a class the first items in key order are taken.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["allocate", "keyed_order", "stratified_partition", "stratified_subset"]

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _stream(seed: int, salt: str) -> np.uint64:
    digest = hashlib.blake2b(f"{int(seed)}\x1f{salt}".encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "little"))


def keyed_order(n: int, seed: int, salt: str) -> np.ndarray:
    """A permutation of ``range(n)`` determined by ``(seed, salt)`` alone."""
    with np.errstate(over="ignore"):
        z = np.arange(1, n + 1, dtype=np.uint64) * _GAMMA + _stream(seed, salt)
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
    return np.argsort(z, kind="stable")


def allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over classes proportionally to ``counts`` (largest remainder; never above a count)."""
    counts = np.asarray(counts, dtype=np.int64)
    size = int(counts.sum())
    total = max(0, min(int(total), size))
    if size == 0:
        return np.zeros_like(counts)
    exact = counts * total / size
    base = np.floor(exact).astype(np.int64)
    leftover = total - int(base.sum())
    if leftover:
        remainder = exact - base
        # largest remainder first; stable sort on the negated value keeps ties in label order
        order = np.argsort(-remainder, kind="stable")
        base[order[:leftover]] += 1
    return base


def _by_class(labels: np.ndarray, order: np.ndarray, num_classes: int) -> list[np.ndarray]:
    ordered = labels[order]
    return [order[ordered == c] for c in range(num_classes)]


def stratified_partition(
    labels: np.ndarray, fractions: dict[str, float], *, seed: int, salt: str, rest: str
) -> dict[str, np.ndarray]:
    """Cut a pool into named parts of the given fractions (in the given order) plus ``rest``; sorted indices.

    Each part's size is ``round(fraction * N)``, spread over classes by :func:`allocate`. A part depends only
    on the parts named before it, so adding a later part never changes an earlier one.
    """
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = int(labels.max()) + 1 if labels.size else 0
    members = _by_class(labels, keyed_order(labels.size, seed, salt), num_classes)
    counts = np.array([m.size for m in members], dtype=np.int64)
    taken = np.zeros(num_classes, dtype=np.int64)
    parts: dict[str, np.ndarray] = {}
    for name, fraction in fractions.items():
        want = allocate(counts, round(fraction * labels.size))
        want = np.minimum(want, counts - taken)
        parts[name] = np.sort(np.concatenate([m[t : t + w] for m, t, w in zip(members, taken, want, strict=True)]))
        taken += want
    parts[rest] = np.sort(np.concatenate([m[t:] for m, t in zip(members, taken, strict=True)]))
    return parts


def stratified_subset(indices: np.ndarray, labels: np.ndarray, size: int, *, seed: int, salt: str) -> np.ndarray:
    """``size`` of ``indices`` (with ``labels[i]`` their labels), class proportions kept; sorted."""
    indices = np.asarray(indices, dtype=np.int64)
    if size >= indices.size:
        return np.sort(indices)
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = int(labels.max()) + 1 if labels.size else 0
    members = _by_class(labels, keyed_order(indices.size, seed, salt), num_classes)
    want = allocate(np.array([m.size for m in members]), size)
    positions = np.concatenate([m[:w] for m, w in zip(members, want, strict=True)])
    return np.sort(indices[positions])
