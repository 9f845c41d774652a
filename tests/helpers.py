"""What several test modules share: small real models and data for tests that must not wait for a full
pretrain, readers of the stores, child processes read with a deadline (and stopped with their test), the
slow studies of the fault and cluster tests, and the independent CT reference of the steering tests."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import ct_tune  # noqa: F401  (torchvision compat first)
from ct_tune.objectives import EvalData, EvalTarget

import numpy as np
import optuna
import pytest
import torch
import torch.nn.functional as F
from mlflow import MlflowClient
from optuna.trial import TrialState
from sklearn.datasets import load_digits
from torch import nn

if TYPE_CHECKING:
    from tests.conftest import Stores


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


def plain_val_hits(checkpoint: Path, batch_size: int) -> tuple[int, int]:
    """(correct, total) of the checkpoint's network as it is, no ct-tune steering or objective in between, on
    the val split that ``ct-tune evaluate`` and studies score (digits, seed 0): plain forward passes of
    ``batch_size`` images on the CPU."""
    from ct_tune.data import create_datamodule
    from ct_tune.models import create_model

    data = create_datamodule("digits", seed=0)
    model = create_model(str(checkpoint), num_classes=data.num_classes)
    data.input_spec = model.input_spec
    x, y = data.tensors("val")
    net, normalize = model.net.eval(), model.input_spec.normalize
    with torch.no_grad():
        logits = torch.cat([net(normalize(x[i : i + batch_size])) for i in range(0, len(y), batch_size)])
    return int((logits.argmax(1) == y).sum()), len(y)


def run_betas(run) -> dict[str, float]:
    """A trial run's beta params under Optuna's names: MLflow's ``beta.03.layer1.0`` is ``beta.layer1.0``."""
    return {re.sub(r"^beta\.\d+\.", "beta.", k): float(v) for k, v in run.data.params.items() if k.startswith("beta.")}


def listing(root: Path) -> list[str]:
    """Every file and folder under ``root``, relative to it: what a refused command must leave as it was
    (the default stores are files under the working directory: studies/optuna.db, mlruns/mlflow.db)."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


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


# ------------------------------------------------------------------------------------------------------
# Child processes: read with a deadline, stopped with the test that started them

_STARTED: list[subprocess.Popen] = []


def spawn(command: list[str], **popen_kwargs) -> subprocess.Popen:
    """``subprocess.Popen(command, ...)``, stopped with its descendants when the test ends (conftest's
    ``_stop_what_the_test_started``) if it still runs then: a test that fails midway leaves no launcher or
    worker computing beside the rest of the suite."""
    proc = subprocess.Popen(command, **popen_kwargs)
    _STARTED.append(proc)
    return proc


def stop_started() -> None:
    """SIGKILL every process ``spawn`` started that still runs, and its descendants."""
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:  # not reaped yet: its pid, and the parent links to it, are still its own
            for pid in descendants(proc.pid, process_table()) | {proc.pid}:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def process_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, state) of every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                table[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0])
    return table


def descendants(root: int, table: dict[int, tuple[int, int, str]]) -> set[int]:
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, (parent, _, _) in table.items() if parent in frontier} - found
        found |= frontier
    return found


def read_until(
    proc: subprocess.Popen, pattern: str, seen: list[str], *, timeout: float, stream: str = "stderr"
) -> re.Match:
    """Read ``proc``'s ``stream`` ("stderr" or "stdout", a pipe) line by line until a line matches
    ``pattern``; every line read is appended to ``seen``.

    Never waits past ``timeout`` seconds: a child that stays silent, or stops in the middle of a line, raises
    TimeoutError with what it printed. It reads the pipe's descriptor one byte at a time and stops at the
    end of the matching line, so nothing after it is taken from a later read or ``communicate()``.
    """
    pipe = getattr(proc, stream)
    assert pipe is not None, f"{stream} of the child is not a pipe"
    deadline = time.monotonic() + timeout
    line = bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(pipe.fileno(), selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                if line:
                    seen.append(line.decode(errors="replace"))
                raise TimeoutError(f"{pattern!r} not printed within {timeout} s; {stream} so far:\n{''.join(seen)}")
            byte = os.read(pipe.fileno(), 1)
            if not byte:
                if line:
                    seen.append(line.decode(errors="replace"))
                raise AssertionError(f"{pattern!r} never printed ({stream} ended); {stream}:\n{''.join(seen)}")
            line += byte
            if byte == b"\n":
                text = line.decode(errors="replace")
                seen.append(text)
                line.clear()
                if match := re.search(pattern, text):
                    return match


def start_cli(cwd: Path, *args: str, own_group: bool = False) -> subprocess.Popen:
    """``ct-tune ARGS`` started in ``cwd`` as its own process, output piped, for tests that signal it;
    ``own_group``: it leads a process group of its own and its workers, which ``os.killpg`` signals as a
    terminal's Ctrl-C does."""
    from tests.conftest import SOURCE_ROOT, visible_gpus

    env = {
        "PYTHONPATH": str(SOURCE_ROOT),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PATH": "/usr/bin:/bin",
        **visible_gpus(),
    }
    return spawn(
        [sys.executable, "-m", "ct_tune.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=own_group,
    )


def start_launch(cwd: Path, *args: str, own_group: bool = False) -> subprocess.Popen:
    """``start_cli``; a launch of several workers gets ``--oversubscribe`` (a test process pinned to one
    core would be refused its workers)."""
    if "--workers" in args:
        args = (*args, "--oversubscribe")
    return start_cli(cwd, *args, own_group=own_group)


# ------------------------------------------------------------------------------------------------------
# Studies on the stores of the ``stores`` fixture (SQLite or PostgreSQL), for the worker, fault and
# cluster tests

# A slow objective (a 30-step attack, a few seconds a trial) so that a fault lands inside a trial.
SLOW_OBJECTIVES = [{"name": "adversarial", "eps": 0.05, "steps": 30, "n": 359}]
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED", "RUNNING": "RUNNING"}


def create_study_cli(
    cli_fast, tmp_path: Path, checkpoint: Path, stores: Stores, name: str, n_trials: int, **sections
) -> list[str]:
    """``ct-tune study create`` of a digits study (conftest's ``write_spec``; ``sections`` replace the
    spec's) on ``stores``; returns the store options every later command of the test passes."""
    from tests.conftest import write_spec

    write_spec(tmp_path / f"{name}.yaml", checkpoint, name=name, budget={"n_trials": n_trials}, **sections)
    options = ["--storage", stores.storage, "--tracking-uri", stores.tracking]
    result = cli_fast("study", "create", f"{name}.yaml", *options)
    assert result.returncode == 0, result.stderr
    return options


def trials_of(stores: Stores, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=stores.storage).get_trials()


def child_runs(stores: Stores, name: str) -> list:
    """The trial runs (children of the study's run) of a study's MLflow experiment."""
    client = MlflowClient(stores.tracking)
    experiment = client.get_experiment_by_name(f"ct-tune/{name}")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return [run for run in runs if "mlflow.parentRunId" in run.data.tags]


def wait_until_inside_a_trial(stores: Stores, name: str, *, worker: int, seconds: float = 180) -> None:
    """Until ``worker`` is inside a trial: once its trial's MLflow run is open, the Optuna trial is RUNNING."""
    deadline = time.monotonic() + seconds
    while not any(
        run.data.tags.get("ct_tune.worker") == str(worker) and run.info.status == "RUNNING"
        for run in child_runs(stores, name)
    ):
        assert time.monotonic() < deadline, f"worker {worker} never started a trial"
        time.sleep(0.2)


def assert_exact_budget(stores: Stores, name: str, n_trials: int, *, workers: int, stderr: str) -> None:
    """``workers`` workers ran the accuracy study ``name`` to exactly ``n_trials`` finished trials: each said
    it was ready and ended trials, nothing is RUNNING, and every trial has exactly one MLflow run with its
    state, betas and value (a trial discarded after the budget was reached elsewhere has none)."""
    assert len(re.findall(r"worker \d ready", stderr)) == workers, stderr
    assert {int(w) for w in re.findall(r"\[w(\d)\] trial", stderr)} == set(range(workers)), stderr
    trials = trials_of(stores, name)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n_trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    runs = {int(r.data.tags["optuna.trial_number"]): r for r in child_runs(stores, name)}
    for trial in trials:
        if "ct_tune.discarded" in trial.user_attrs:  # started after the budget was reached elsewhere
            assert trial.number not in runs
            continue
        run = runs.pop(trial.number)
        assert run.info.status != "RUNNING"
        assert run.data.tags["ct_tune.state"] == trial.state.name
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run_betas(run) == {k: v for k, v in trial.params.items() if k.startswith("beta.")}
        if trial.state == TrialState.COMPLETE:
            assert run.data.metrics["accuracy"] == pytest.approx(trial.values[0])
    assert runs == {}  # exactly one run per trial


def assert_agree(stores: Stores, name: str) -> list[optuna.trial.FrozenTrial]:
    """Optuna and MLflow tell the same story, trial by trial, for a study on ``SLOW_OBJECTIVES``; nothing is
    RUNNING. Returns the trials."""
    trials = trials_of(stores, name)
    runs: dict[int, list] = defaultdict(list)
    for run in child_runs(stores, name):
        runs[int(run.data.tags["optuna.trial_number"])].append(run)
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    for trial in trials:
        described = f"trial {trial.number} ({trial.state.name}, {trial.user_attrs})"
        mine = runs.pop(trial.number, [])
        if trial.state == TrialState.WAITING or "ct_tune.discarded" in trial.user_attrs:
            assert not mine, described  # never started here: no run
            continue
        if trial.state == TrialState.FAIL and not mine:
            continue  # failed before its run opened
        assert len(mine) == 1, described  # one run per trial
        run = mine[0]
        # (a worker killed between opening the run and storing its id: the run is found by its number)
        named = trial.user_attrs.get("mlflow_run_id", run.info.run_id if trial.state == TrialState.FAIL else None)
        assert run.info.run_id == named, described
        assert run.data.tags["ct_tune.state"] == trial.state.name, described
        assert run.info.status == RUN_STATUS[trial.state.name], described
        if trial.state == TrialState.COMPLETE:
            assert run.data.metrics["adversarial"] == pytest.approx(trial.values[0]), described
    assert not runs, f"runs of trials Optuna does not have: {sorted(runs)}"
    return trials


# ------------------------------------------------------------------------------------------------------
# The independent CT reference of the steering tests (it shares no code with ct_tune.steering), and a user
# model with every way of applying ReLU


def formula(x: torch.Tensor, beta: float, c: float) -> torch.Tensor:
    if beta == 1.0:
        return torch.relu(x)
    m = 1.0 - beta
    return c * torch.sigmoid(beta * x / m) * x + (1.0 - c) * torch.logaddexp(torch.zeros_like(x), x / m) * m


class RefCT(nn.Module):
    """Stands in for one nn.ReLU; ``betas[k]`` is used for its k-th call in a forward pass."""

    def __init__(self, betas: list[float], c: float) -> None:
        super().__init__()
        self.betas, self.c, self.calls = betas, c, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = self.betas[self.calls % len(self.betas)]
        self.calls += 1
        return formula(x, beta, self.c)


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    """Close relative to the output's magnitude (random-init MobileNet logits are ~1e-9)."""
    scale = expected.abs().max().clamp_min(1e-30)
    torch.testing.assert_close(actual / scale, expected / scale, rtol=rtol, atol=rtol * 0.1)


def assert_differs_scaled(a: torch.Tensor, b: torch.Tensor) -> None:
    scale = b.abs().max().clamp_min(1e-30)
    assert ((a - b).abs().max() / scale) > 1e-3


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin1, self.lin2, self.lin3 = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.lin1(x))  # block.relu()#0
        z = self.lin2(y)
        z.relu_()  # block.relu()#1: in place, result ignored
        w = nn.ReLU()(self.lin3(z))  # block.relu()#2: module built inside forward
        return w + F.relu(x, inplace=False)  # block.relu()#3


class Tricky(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.out = (
            nn.Linear(8, 16),
            nn.Linear(16, 16),
            nn.Linear(16, 16),
            nn.Linear(16, 3),
        )
        self.relu = nn.ReLU(inplace=True)
        self.block = Block()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.fc1(x))  # relu#0
        x = self.relu(self.fc2(x))  # relu#1: the same module again
        x = self.block(x)
        x = F.relu(self.fc3(x), inplace=True)  # relu()#0: inline in the model's own forward
        return self.out(x)


TRICKY_SITES = ["relu#0", "relu#1", "block.relu()#0", "block.relu()#1", "block.relu()#2", "block.relu()#3", "relu()#0"]
