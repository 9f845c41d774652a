"""Data for a study: three disjoint splits (train for probes, val for trials, test for the final report
only), served as float32 pixels in [0, 1] for one model's input spec.

``create_datamodule(name)`` builds a ``CTDataModule`` (a ``LightningDataModule``) for the datasets in the
catalogue: offline ones shipped inside installed packages, torchvision's, and an ImageFolder tree.

``CTDataModule`` and ``create_datamodule`` import Lightning, which takes seconds; they load on first use so
that reading the catalogue (``list_datasets``, the CLI's ``--help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from ct_tune.data._cache import CACHE_ENV, CacheEntry, SplitCache, default_cache_dir
from ct_tune.data._catalogue import (
    DATA_DIR_ENV,
    DATASETS,
    check_dataset_name,
    default_data_dir,
    list_datasets,
    resolve_data_dir,
)
from ct_tune.data._samples import Samples
from ct_tune.data._user import ComponentSpec, UserData

__all__ = [
    "CACHE_ENV",
    "DATASETS",
    "DATA_DIR_ENV",
    "SPLITS",
    "CTDataModule",
    "CacheEntry",
    "ComponentSpec",
    "Samples",
    "SplitCache",
    "UserData",
    "check_dataset_name",
    "create_datamodule",
    "default_cache_dir",
    "default_data_dir",
    "list_datasets",
    "resolve_data_dir",
]

_LAZY = {"CTDataModule": "_datamodule", "create_datamodule": "_datamodule", "SPLITS": "_datamodule"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"ct_tune.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'ct_tune.data' has no attribute {name!r}")
