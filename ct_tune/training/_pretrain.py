"""``pretrain()``, behind ``ct-tune pretrain``: a classifier trained on a dataset's train split.

``pretrain`` trains with a Lightning ``Trainer``
(SGD with Nesterov momentum and a one-cycle schedule), keeps the best validation epoch with
``ModelCheckpoint``, logs to MLflow with an explicit SQL tracking URI, re-scores the best weights on the
materialised val split (the number every later ct-tune command will reproduce) and writes a ct-tune
checkpoint. The test split is never touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ct_tune._quiet import quiet_loggers
from ct_tune.data import CTDataModule, create_datamodule
from ct_tune.models import LoadedModel, create_model, load_checkpoint, save_checkpoint
from ct_tune.stores import prepare_sqlite, redact, resolve_tracking_uri
from ct_tune.tracking.keys import TAG_CHECKPOINT, TAG_COMMAND, TAG_DATA, TAG_DATASET_FINGERPRINT, TAG_MODEL
from ct_tune.training._config import PretrainConfig
from ct_tune.training._module import ClassifierModule
from ct_tune.training._progress import progress_callbacks

import lightning as L
import torch
from torch import Tensor

__all__ = ["evaluate", "pretrain"]

logger = logging.getLogger(__name__)


@torch.inference_mode()
def evaluate(model: LoadedModel, x: Tensor, y: Tensor, *, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on pixel tensors (in eval mode, on the tensors' device)."""
    model.net.eval()
    correct = 0
    for start in range(0, x.shape[0], batch_size):
        logits = model(x[start : start + batch_size])
        correct += int((logits.argmax(dim=1) == y[start : start + batch_size]).sum())
    return correct / max(1, x.shape[0])


def pretrain(config: PretrainConfig) -> dict[str, Any]:
    """Train, keep the best val epoch, write a ct-tune checkpoint; returns what ``--json`` prints.

    Lightning prints its progress bar and model summary to stdout; they go to stderr here, because
    stdout is for results (a caller's ``--json`` or table). Training and the final val score run at
    ``config.threads`` torch threads, the caller's count restored afterwards (see ``_torch_threads``).
    """
    config.check()
    # Lightning's info lines (GPU/TPU availability, a tip advertising its cloud logger, "Loading
    # train_dataloader ...") and its MLflow logger's "Experiment ... not found. Creating it." are not the
    # user's news; warnings and errors still come through.
    with (
        _mlflow_tracking_uri_restored(),
        quiet_loggers("lightning.pytorch", "lightning.fabric"),
        quiet_loggers("lightning.pytorch.loggers.mlflow", level=logging.ERROR),
        contextlib.redirect_stdout(sys.stderr),
        _torch_threads(config.threads),
    ):
        return _pretrain(config)


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """Run at a fixed number of torch threads. On CPU, convolutions, matmuls and batch norm split their sums
    by thread count, and float addition is not associative: the same seed at 1 and at 2 threads gives
    different weights (and, 15 epochs later, a val accuracy a point apart), so the checkpoint would depend
    on the machine's cores and ``OMP_NUM_THREADS``. Lightning's ``deterministic=True`` does not cover this."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _mlflow_tracking_uri_restored() -> Iterator[None]:
    """Lightning's MLFlowLogger calls ``mlflow.set_tracking_uri``, which also writes
    ``$MLFLOW_TRACKING_URI`` into this process's environment: every later MLflow client (and every
    subprocess) would then log to the pretraining store. Put both back as they were."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        yield
    finally:
        import mlflow

        mlflow.set_tracking_uri(previous)  # None unsets the variable again


def _pretrain(config: PretrainConfig) -> dict[str, Any]:
    started = time.perf_counter()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # nothing phones home unless the user opts in
    tracking_uri = resolve_tracking_uri(config.tracking_uri)
    prepare_sqlite(tracking_uri)
    out = config.output_path()
    L.seed_everything(config.seed, workers=True, verbose=False)  # before the model: its initial weights too
    datamodule, model = _data_and_model(config)
    logger.info("%s: %s", model.name, datamodule)
    module = ClassifierModule(
        model, lr=config.lr, weight_decay=config.weight_decay, label_smoothing=config.label_smoothing
    )
    with tempfile.TemporaryDirectory(prefix=".ct-tune-pretrain-", dir=_existing_parent(out)) as scratch:
        with _torch_flags_restored():
            trainer, mlflow_logger = _trainer(config, tracking_uri, datamodule, scratch)
            fit_started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*does not have many workers.*")
                # Lightning 2.6 on torch 2.13 calls a deprecated pytree check every step
                warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
                trainer.fit(module, datamodule=datamodule)
            fit_seconds = time.perf_counter() - fit_started
        best_epoch = _load_best(trainer, module)
    model.net.cpu()

    # the number every later command reproduces: the best weights on the materialised val split
    device = trainer.strategy.root_device
    x, y = datamodule.tensors("val", device=device)
    val_accuracy = evaluate(model.to(device), x, y, batch_size=max(config.batch_size, 256))
    model.net.cpu()
    datamodule.clear_cache()
    description = datamodule.describe()
    metadata = {
        "dataset": description,
        "val_accuracy": val_accuracy,
        "best_epoch": best_epoch,
        "training": {key: value for key, value in asdict(config).items() if key not in ("tracking_uri", "progress")},
        "mlflow_run_id": mlflow_logger.run_id,
    }
    path = save_checkpoint(model, out, **metadata)
    seconds = time.perf_counter() - started
    client = mlflow_logger.experiment
    client.log_metric(mlflow_logger.run_id, "val_accuracy", val_accuracy)
    client.set_tag(mlflow_logger.run_id, TAG_CHECKPOINT, str(path.resolve()))
    client.set_tag(mlflow_logger.run_id, TAG_DATASET_FINGERPRINT, description["fingerprint"])
    client.log_metric(mlflow_logger.run_id, "seconds", seconds)
    return {
        "checkpoint": str(path),
        "val_accuracy": val_accuracy,
        "seconds": round(seconds, 2),
        "fit_seconds": round(fit_seconds, 2),
        "best_epoch": best_epoch,
        "epochs": config.epochs,
        "model": model.name,
        "parameters": sum(p.numel() for p in model.net.parameters()),
        "data": config.data,
        "sizes": description["sizes"],
        "fingerprint": description["fingerprint"],
        "seed": config.seed,
        "device": str(device),
        "mlflow_run_id": mlflow_logger.run_id,
        "tracking_uri": redact(tracking_uri),
    }


def _existing_parent(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path.parent)


def _trainer(
    config: PretrainConfig, tracking_uri: str, datamodule: CTDataModule, scratch: str
) -> tuple[L.Trainer, Any]:
    from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
    from lightning.pytorch.loggers import MLFlowLogger

    mlflow_logger = MLFlowLogger(
        experiment_name=config.experiment,
        run_name=f"{config.output_path().stem}",
        tracking_uri=tracking_uri,
        tags={TAG_COMMAND: "pretrain", TAG_MODEL: config.model, TAG_DATA: config.data},
        log_model=False,
    )
    checkpoint = ModelCheckpoint(
        dirpath=scratch, filename="best", monitor="val_acc", mode="max", save_top_k=1, enable_version_counter=False
    )
    steps_per_epoch = max(1, datamodule.sizes()["train"] // config.batch_size)
    shown = progress_callbacks(progress=config.progress, steps_per_epoch=steps_per_epoch)
    trainer = L.Trainer(
        max_epochs=config.epochs,
        accelerator=config.accelerator,
        devices=1,
        precision=config.precision,
        logger=mlflow_logger,
        callbacks=[checkpoint, *shown],
        # CUDA has no deterministic kernel for some backward passes (adaptive pooling): warn there, enforce on CPU
        deterministic=True if not torch.cuda.is_available() else "warn",
        default_root_dir=scratch,
        log_every_n_steps=min(50, steps_per_epoch),
        enable_progress_bar=any(isinstance(callback, ProgressBar) for callback in shown),
        enable_model_summary=False,  # Lightning's table: the parameter count is in the result
    )
    return trainer, mlflow_logger


def _data_and_model(config: PretrainConfig) -> tuple[CTDataModule, LoadedModel]:
    """The data first (its classes and channels shape the model), then the model, whose spec shapes the data."""
    datamodule = create_datamodule(
        config.data,
        data_dir=config.data_dir,
        download=config.download,
        seed=config.seed,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        train_size=config.train_size,
        val_size=config.val_size,
        augment=config.augment,
    )
    shape = {"num_classes": datamodule.num_classes, "in_channels": datamodule.native_channels}
    if config.checkpoint:
        model = load_checkpoint(config.checkpoint, model=config.model, input_size=config.input_size, **shape)
    else:
        model = create_model(
            config.model, weights=config.weights, input_size=config.input_size, **shape, **config.model_kwargs()
        )
    if model.input_spec.size is None and datamodule.native_size is not None:
        # The checkpoint remembers the image size it learned at, as ImageNet weights remember 224: data it is
        # later transferred to (28x28 MNIST for a model of 8x8 digits) is resized to what its filters expect.
        model.input_spec = model.input_spec.with_size(datamodule.native_size)
    datamodule.input_spec = model.input_spec
    return datamodule, model


def _load_best(trainer: L.Trainer, module: ClassifierModule) -> int | None:
    """Put the best val epoch's weights (kept by ModelCheckpoint) back into the module; its epoch."""
    callback = trainer.checkpoint_callback
    if callback is None or not callback.best_model_path:
        return None
    state = torch.load(callback.best_model_path, map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"])
    return int(state.get("epoch", -1))


@contextlib.contextmanager
def _torch_flags_restored() -> Iterator[None]:
    """Lightning's ``deterministic`` sets process-wide torch flags; give the caller's back afterwards."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
