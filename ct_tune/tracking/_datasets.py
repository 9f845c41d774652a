"""Which data a run's numbers came from, as MLflow datasets (the runs table's Dataset column and filter).

A study's parent run and every trial run carry the val split they were scored on; a report adds the test
split to the parent run and to the trial runs it scored. The digest is the split's fingerprint (the same one
a study checks its data against), so two studies on different splits show different digests, and equal
digests mean the same samples and labels. The source names where the data came from (a built-in dataset's
folder, a user's class path), never the arguments it was built with: those may hold a token or a password.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.entities import DatasetInput

__all__ = ["SplitDataset", "split_datasets"]

CONTEXTS = {"train": "training", "val": "validation", "test": "test"}  # MLflow's mlflow.data.context values
CONTEXT_TAG = "mlflow.data.context"


@dataclass(frozen=True)
class SplitDataset:
    """One split of a study's data as MLflow records it."""

    name: str  # ``<dataset>-<split>``: ``digits-val``, ``mypkg.data.Tiles-test``
    digest: str  # the split's fingerprint (16 hex digits; MLflow takes 36 at most)
    split: str
    origin: str  # a built-in dataset's folder (or loader), else the class the split is read from
    rows: int | None
    sample_shape: tuple[int, ...] | None
    classes: int | None

    def to_input(self) -> DatasetInput:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        if os.path.isabs(self.origin):  # the UI shows a local source's path
            source_type, source = "local", {"uri": self.origin}
        else:
            source_type, source = "code", {"tags": {"origin": self.origin}}
        profile = {"rows": self.rows, "sample_shape": self.sample_shape, "classes": self.classes}
        dataset = Dataset(self.name, self.digest, source_type, json.dumps(source), profile=json.dumps(profile))
        return DatasetInput(dataset, tags=[InputTag(CONTEXT_TAG, CONTEXTS[self.split])])


def split_datasets(description: Mapping[str, Any], splits: Sequence[str]) -> list[SplitDataset]:
    """The ``splits`` of the data ``description`` (``describe()`` of the data, as a study's meta holds it)
    that have a fingerprint: a user's test split has none until a report reads it, and a study created before
    per-split fingerprints were recorded has none at all (its runs carry no dataset)."""
    fingerprints = description.get("fingerprints") or {}
    class_paths = description.get("class_paths") or {}
    sizes = description.get("sizes") or {}
    shape = description.get("sample_shape")
    if shape is None and description.get("input_size") is not None:  # built-in data: served square
        shape = [description.get("input_channels"), description["input_size"], description["input_size"]]
    found = []
    for split in splits:
        if split not in fingerprints:
            continue
        label = class_paths.get(split) or str(description.get("name", "data"))
        found.append(
            SplitDataset(
                name=f"{label}-{split}",
                digest=str(fingerprints[split]),
                split=split,
                origin=class_paths.get(split) or str(description.get("location") or label),
                rows=sizes.get(split),
                sample_shape=tuple(shape) if shape is not None else None,
                classes=description.get("num_classes"),
            )
        )
    return found
