"""The pretraining's weights do not depend on the machine's thread count, and what it writes while training
suits where stderr goes: a live bar on a terminal, a few plain lines into a file (a CI log, ``2> log``)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from ct_tune.training._progress import EpochLines, progress_callbacks

import pytest
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from tests.conftest import SOURCE_ROOT


def _pretrain_with_threads(root: Path, threads: int) -> tuple[dict[str, torch.Tensor], str]:
    """A small pretraining in a fresh interpreter whose torch starts with ``threads`` threads (as on a
    machine with that many cores), its stderr into a file; the weights and that file's text."""
    out, log = root / f"omp{threads}.pt", root / f"omp{threads}.log"
    env = {**os.environ, "PYTHONPATH": str(SOURCE_ROOT), "OMP_NUM_THREADS": str(threads)}
    env.pop("MLFLOW_TRACKING_URI", None)
    args = ("--data", "digits", "--epochs", "2", "--train-size", "256", "--val-size", "100", "--accelerator", "cpu")
    with log.open("w") as stderr:
        done = subprocess.run(
            [sys.executable, "-m", "ct_tune.cli", "pretrain", *args, "--out", str(out)],
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            timeout=300,
        )
    assert done.returncode == 0, log.read_text()
    return torch.load(out, weights_only=True)["state_dict"], log.read_text()


@pytest.mark.slow
def test_pretraining_gives_the_same_weights_at_1_and_2_threads_and_a_few_lines_into_a_file(tmp_path):
    one, one_log = _pretrain_with_threads(tmp_path, 1)
    two, two_log = _pretrain_with_threads(tmp_path, 2)  # before the threads were fixed: other weights
    assert one.keys() == two.keys()
    assert all(torch.equal(one[key], two[key]) for key in one), [k for k in one if not torch.equal(one[k], two[k])]
    for log in (one_log, two_log):
        assert "\r" not in log and len(log.encode()) < 4000, log  # no bar redraws (80 KB for the quickstart)
        assert "epoch 1/2: train loss " in log and "epoch 2/2: " in log and ", val acc 0." in log


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_the_live_bar_a_file_epoch_lines_and_no_progress_nothing():
    (bar,) = progress_callbacks(progress=True, steps_per_epoch=40, stream=_Terminal())
    assert isinstance(bar, TQDMProgressBar) and bar.refresh_rate == 4
    (lines,) = progress_callbacks(progress=True, steps_per_epoch=40, stream=io.StringIO())
    assert isinstance(lines, EpochLines)
    assert progress_callbacks(progress=False, steps_per_epoch=40, stream=_Terminal()) == []
