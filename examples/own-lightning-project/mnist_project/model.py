"""A small CNN as a LightningModule: one ReLU module reused in two places and one inline F.relu."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        return F.max_pool2d(self.relu(self.conv2(x)), 2)


class LitCNN(L.LightningModule):
    def __init__(self, width: int = 16, num_classes: int = 10, lr: float = 2e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.block1 = Block(1, width)
        self.block2 = Block(width, 2 * width)
        self.hidden = nn.Linear(2 * width * 7 * 7, 64)
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.block2(self.block1(x)).flatten(1)
        return self.classifier(F.relu(self.hidden(features)))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_index: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_index: int) -> None:
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
