"""Training a classifier to steer: ``pretrain(PretrainConfig(...))`` is ``ct-tune pretrain`` from Python.

Lightning trains (SGD with Nesterov momentum and a one-cycle schedule, seeded and deterministic), keeps
the best val epoch and logs to MLflow; the result is a ct-tune checkpoint. The test split is never read.

``PretrainConfig`` checks its settings without Lightning (bad input fails in milliseconds); the names
that need Lightning load on first use. Training CT's own betas on a trained network (``ct-tune train-ct``)
is ``ct_tune.trained``.
"""

from __future__ import annotations

import importlib
from typing import Any

from ct_tune.training._config import EXPERIMENT, PretrainConfig

__all__ = ["EXPERIMENT", "ClassifierModule", "PretrainConfig", "evaluate", "pretrain"]

_LAZY = {"ClassifierModule": "_module", "evaluate": "_pretrain", "pretrain": "_pretrain"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"ct_tune.training.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'ct_tune.training' has no attribute {name!r}")
