"""What several benchmarks share (run as ``python benchmarks/X.py``: this folder is on the path)."""

from __future__ import annotations

from pathlib import Path

import ct_tune  # noqa: F401  (first: makes torchvision importable)


def pretrained_checkpoint(root: Path, data: str = "digits", seed: int | None = None, activation: str = "relu") -> Path:
    """The small built-in ResNet pretrained on ``data`` (split and initialisation of ``seed``, default 0):
    ``root/<data>.pt`` (``<data>-seed<seed>.pt`` when a seed is given, ``<data>-<activation>[-seed<seed>].pt``
    for SiLU or GELU) when it is there, else trained now into it (about 20 s on digits, 70 s on mnist5k)."""
    stem = data if activation == "relu" else f"{data}-{activation}"
    path = root / (f"{stem}.pt" if seed is None else f"{stem}-seed{seed}.pt")
    if path.exists():
        return path
    from ct_tune.training import PretrainConfig, pretrain

    tracking = f"sqlite:///{root}/mlflow.db"
    config = PretrainConfig(
        data=data, seed=seed or 0, activation=activation, out=str(path), tracking_uri=tracking, progress=False
    )
    return Path(pretrain(config)["checkpoint"])


def pretrained_digits_checkpoint(root: Path) -> Path:
    """The quickstart's checkpoint when it is cached in the working directory, else one trained now."""
    cached = Path("checkpoints/cifar_resnet_small-digits-seed0.pt")
    return cached if cached.is_file() else pretrained_checkpoint(root, "digits")
