"""What several benchmarks share (run as ``python benchmarks/X.py``: this folder is on the path)."""

from __future__ import annotations

from pathlib import Path

import ct_tune  # noqa: F401  (first: makes torchvision importable)


def pretrained_digits_checkpoint(root: Path) -> Path:
    """The quickstart's checkpoint when it is cached here, else the small ResNet pretrained on digits now
    (about 20 s) into ``root``."""
    from ct_tune._pretrain_config import PretrainConfig
    from ct_tune.training import pretrain

    cached = Path("checkpoints/cifar_resnet_small-digits-seed0.pt")
    if cached.is_file():
        return cached
    config = PretrainConfig(
        data="digits", out=str(root / "digits.pt"), tracking_uri=f"sqlite:///{root}/mlflow.db", progress=False
    )
    return Path(pretrain(config)["checkpoint"])
