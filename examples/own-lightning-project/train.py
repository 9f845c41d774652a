"""Train the project's model briefly and write a Lightning checkpoint: python train.py [--epochs N]."""

from __future__ import annotations

import argparse

import ct_tune  # noqa: F401  (first: makes torchvision, and so lightning, importable next to a CPU-only torch)

import lightning as L
from mnist_project.data import MNISTDataModule
from mnist_project.model import LitCNN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default="checkpoints/litcnn.ckpt")
    args = parser.parse_args()
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        max_epochs=args.epochs, accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False
    )
    model, data = LitCNN(), MNISTDataModule()
    trainer.fit(model, datamodule=data)
    trainer.save_checkpoint(args.out)
    print(f"wrote {args.out} (val accuracy {trainer.callback_metrics['val_acc']:.3f})")


if __name__ == "__main__":
    main()
