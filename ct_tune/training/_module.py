"""The LightningModule ``pretrain`` trains: cross-entropy on pixel-space batches around a ``LoadedModel``.

The module holds the raw network as ``self.net`` and applies the model's ``InputSpec`` in ``forward``, so
the data stays in pixel space as everywhere else in ct-tune.
"""

from __future__ import annotations

from typing import Any

from ct_tune.models import LoadedModel

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

__all__ = ["ClassifierModule"]


class ClassifierModule(L.LightningModule):
    """Cross-entropy training of ``model.net`` on pixel-space batches (normalised by the model's InputSpec).

    Its Lightning checkpoints carry a ``ct_tune`` hyper-parameter (model name, kwargs, classes, input spec),
    so ``ct_tune.models.load_checkpoint`` rebuilds them without being told the architecture.
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        lr: float = 0.1,
        weight_decay: float = 5e-4,
        momentum: float = 0.9,
        label_smoothing: float = 0.0,
        warmup_fraction: float = 0.15,
    ) -> None:
        super().__init__()
        self.net = model.net.train()  # models arrive in eval mode; Lightning keeps the mode it finds at fit start
        self.input_spec = model.input_spec
        self.save_hyperparameters(
            {
                "ct_tune": model.architecture(),
                "lr": lr,
                "weight_decay": weight_decay,
                "momentum": momentum,
                "label_smoothing": label_smoothing,
                "warmup_fraction": warmup_fraction,
            }
        )
        self.train_accuracy = MulticlassAccuracy(num_classes=model.num_classes, average="micro")
        self.val_accuracy = MulticlassAccuracy(num_classes=model.num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.input_spec.normalize(x))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_index: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        self.train_accuracy(logits, y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train_acc", self.train_accuracy, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_index: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_accuracy(logits, y)
        self.log("val_loss", F.cross_entropy(logits, y), on_step=False, on_epoch=True)
        self.log("val_acc", self.val_accuracy, on_step=False, on_epoch=True, prog_bar=True)

    def configure_optimizers(self) -> Any:
        decay, no_decay = [], []
        for parameter in self.net.parameters():
            if parameter.requires_grad:
                (no_decay if parameter.dim() <= 1 else decay).append(parameter)  # no decay on BN and biases
        optimizer = torch.optim.SGD(
            [
                {"params": decay, "weight_decay": self.hparams.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.hparams.lr,
            momentum=self.hparams.momentum,
            nesterov=self.hparams.momentum > 0,
        )
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=self.hparams.lr,
            total_steps=max(total, 1),
            pct_start=self.hparams.warmup_fraction,
            cycle_momentum=False,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
