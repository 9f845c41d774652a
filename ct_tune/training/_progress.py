"""What the pretraining shows while it trains: Lightning's live bar on a terminal, one plain line per epoch
into a file or pipe (a CI log, ``2> log``), where the bar's carriage-return redraws piled up to 80 KB for
the quickstart's 15 epochs."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import lightning as L

__all__ = ["EpochLines", "progress_callbacks"]


class EpochLines(L.Callback):
    """One line per epoch on ``stream``: its number, the train loss and the val loss and accuracy."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics  # the epoch's train and val values (validation has run by now)
        shown = ", ".join(
            f"{label} {float(metrics[key]):.4f}"
            for key, label in (("train_loss", "train loss"), ("val_loss", "val loss"), ("val_acc", "val acc"))
            if key in metrics
        )
        seconds = time.perf_counter() - self.started
        print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {shown} ({seconds:.0f} s)", file=self.stream)
        self.stream.flush()


def progress_callbacks(*, progress: bool, steps_per_epoch: int, stream: TextIO | None = None) -> list[Any]:
    """The live bar when ``progress`` and ``stream`` (default stderr) is a terminal, epoch lines when it is
    not, nothing without ``progress``."""
    stream = stream or sys.stderr
    if not progress:
        return []
    if stream.isatty():
        from lightning.pytorch.callbacks import TQDMProgressBar

        return [TQDMProgressBar(refresh_rate=max(1, steps_per_epoch // 10))]
    return [EpochLines(stream)]
