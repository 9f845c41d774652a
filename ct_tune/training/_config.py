"""Settings of ``ct-tune pretrain``, checked without importing Lightning (so bad input fails fast)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ct_tune._errors import InputError
from ct_tune.data import DATASETS
from ct_tune.models import DEFAULT_MODEL, check_activation, check_model_name
from ct_tune.stores import resolve_tracking_uri

__all__ = ["EXPERIMENT", "PretrainConfig"]

EXPERIMENT = "ct-tune-pretrain"


@dataclass
class PretrainConfig:
    """Everything ``ct-tune pretrain`` takes; ``pretrain(PretrainConfig(...))`` is the same from Python."""

    model: str = DEFAULT_MODEL
    activation: str = "relu"  # silu or gelu: the built-in small ResNet with that activation
    data: str = "digits"
    epochs: int = 15
    lr: float = 0.1
    batch_size: int = 64
    seed: int = 0
    out: str | None = None  # default: checkpoints/<model>-<data>-seed<seed>.pt
    weights: str | None = None
    checkpoint: str | None = None  # weights file for ``model`` (state dict or Lightning .ckpt) to start from
    input_size: int | None = None
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    augment: bool = False
    data_dir: str | None = None
    download: bool = False
    val_fraction: float | None = None
    test_fraction: float | None = None
    train_size: int | None = None
    val_size: int | None = None
    num_workers: int = 0
    threads: int = 1  # torch threads while training: 1 gives the same weights on any machine, more is faster
    accelerator: str = "auto"
    precision: str | None = None
    tracking_uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db
    experiment: str = EXPERIMENT
    progress: bool = True

    def check(self) -> None:
        """Cheap checks first, so bad input fails before data or models are loaded."""
        if self.data not in DATASETS:
            raise InputError(f"unknown dataset {self.data!r}; choose one of: {', '.join(DATASETS)}")
        check_model_name(self.model)
        check_activation(model=self.model, activation=self.activation)
        if self.checkpoint is not None and self.activation != "relu":
            raise InputError(
                f"--activation {self.activation} builds a fresh network; --checkpoint {self.checkpoint} brings "
                "its own: pass one of them"
            )
        if self.checkpoint is not None:
            if self.weights is not None:
                raise InputError("--weights and --checkpoint both give starting weights; pass one of them")
            if not os.path.isfile(self.checkpoint):
                raise InputError(f"checkpoint file {self.checkpoint} not found")
        if self.epochs < 1:
            raise InputError(f"--epochs must be at least 1, not {self.epochs}")
        if not self.lr > 0:
            raise InputError(f"--lr must be positive, not {self.lr}")
        if self.threads < 1:
            raise InputError(f"--threads must be at least 1, not {self.threads}")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.weight_decay < 0:
            raise InputError(f"--weight-decay must be 0 or more, not {self.weight_decay}")
        resolve_tracking_uri(self.tracking_uri)  # a bad URI fails before any training

    def model_kwargs(self) -> dict[str, str]:
        """What the model is built with: nothing for ReLU, so ReLU checkpoints stay as they always were."""
        return {} if self.activation == "relu" else {"activation": self.activation}

    def output_path(self) -> Path:
        if self.out:
            return Path(self.out)
        stem = Path(self.model).stem if os.path.exists(self.model) else self.model.replace(":", "_").replace(".", "_")
        if self.activation != "relu":
            stem = f"{stem}-{self.activation}"
        return Path("checkpoints") / f"{stem}-{self.data}-seed{self.seed}.pt"
