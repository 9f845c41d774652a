"""torchvision (a CUDA build from the index) must import next to the CPU torch once ct_tune is imported."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import SOURCE_ROOT

SCRIPT = """
import ct_tune
import torch, torchvision, lightning, torchmetrics
from torchvision import datasets, models, transforms
model = models.resnet18(num_classes=3).eval()
x = transforms.Resize(40)(torch.rand(2, 3, 32, 32))
assert model(x).shape == (2, 3)
assert datasets.CIFAR10.__name__ == "CIFAR10"
print("ok", lightning.__version__)
"""


@pytest.mark.slow
def test_torchvision_and_lightning_import_after_ct_tune():
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SOURCE_ROOT), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")
