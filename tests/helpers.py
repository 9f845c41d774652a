"""Small real models and data for tests that must not wait for a full pretrain, and readers of the stores."""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from pathlib import Path

import ct_tune  # noqa: F401  (torchvision compat first)
from ct_tune.objectives import EvalData, EvalTarget

import numpy as np
import torch
from mlflow import MlflowClient
from sklearn.datasets import load_digits
from torch import nn


class DigitsCNN(nn.Module):
    """A small CNN with a reused in-place ReLU, like torchvision blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        return self.fc(self.pool(x).flatten(1))


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.3) / 0.4


@functools.cache
def digits_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Real 8x8 digits in [0, 1]: a fixed 1,200 / 597 train/val split."""
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.tensor(np.random.default_rng(0).permutation(len(y)))
    x, y = x[order], y[order]
    return x[:1200], y[:1200], x[1200:], y[1200:]


@functools.cache
def trained_digits_cnn() -> DigitsCNN:
    """60 full-batch Adam steps (a few seconds): about 96% val accuracy."""
    torch.manual_seed(0)
    train_x, train_y, _, _ = digits_tensors()
    net = DigitsCNN()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(60):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(normalize(train_x)), train_y).backward()
        optimizer.step()
    return net.eval()


def digits_target(batch_size: int = 128) -> EvalTarget:
    return EvalTarget(trained_digits_cnn(), normalize, num_classes=10, batch_size=batch_size)


def digits_data(with_train: bool = True) -> EvalData:
    train_x, train_y, val_x, val_y = digits_tensors()
    if with_train:
        return EvalData(val_x, val_y, train_x, train_y)
    return EvalData(val_x, val_y)


def run_betas(run) -> dict[str, float]:
    """A trial run's beta params under Optuna's names: MLflow's ``beta.03.layer1.0`` is ``beta.layer1.0``."""
    return {re.sub(r"^beta\.\d+\.", "beta.", k): float(v) for k, v in run.data.params.items() if k.startswith("beta.")}


def mlflow_runs(root: Path, study: str) -> tuple[list, list]:
    """(parent runs, child runs) of a study's MLflow experiment."""
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name(f"ct-tune/{study}")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("ct_tune.role") == "study"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def optuna_trials(root: Path, study: str) -> list[dict]:
    """Trials as the standard `optuna trials` command reads them."""
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "optuna"),
            "trials",
            "--storage",
            f"sqlite:///{root}/studies/optuna.db",
            "--study-name",
            study,
            "-f",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def start_cli(cwd: Path, *args: str, own_group: bool = False) -> subprocess.Popen:
    """``ct-tune ARGS`` started in ``cwd`` as its own process, output piped, for tests that signal it;
    ``own_group``: it leads a process group of its own and its workers, which ``os.killpg`` signals as a
    terminal's Ctrl-C does."""
    from tests.conftest import SOURCE_ROOT

    env = {"PYTHONPATH": str(SOURCE_ROOT), "MLFLOW_DISABLE_TELEMETRY": "true", "PATH": "/usr/bin:/bin"}
    return subprocess.Popen(
        [sys.executable, "-m", "ct_tune.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=own_group,
    )
