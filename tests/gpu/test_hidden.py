"""What a test sees of the machine's GPUs: none unless it is marked ``gpu`` (tests/conftest.py). On a CPU-only
machine these pass trivially; on a GPU machine they are the check that CPU tests stay CPU tests."""

from __future__ import annotations

import os
import subprocess
import sys

from ct_tune.bench._bench import resolve_device
from ct_tune.workers import plan_workers

import pytest
import torch

import tests.conftest as conftest
from tests.conftest import SOURCE_ROOT, hide_gpus, show_gpus, visible_gpus

PROBE = "import torch; print(torch.cuda.is_available(), torch.cuda.device_count())"


def child_sees(env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_test_not_marked_gpu_sees_no_gpu():
    assert not torch.cuda.is_available() and torch.cuda.device_count() == 0
    assert resolve_device("auto") == torch.device("cpu")  # run.device's default
    assert [plan.device for plan in plan_workers(None, "auto")] == ["cpu"]
    assert child_sees(dict(os.environ)) == "False 0"  # a CLI subprocess inheriting the environment
    scratch = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(SOURCE_ROOT), **visible_gpus()}
    assert child_sees(scratch) == "False 0"  # one started with an environment of its own


@pytest.mark.gpu
def test_a_gpu_test_sees_the_machines_gpus():
    assert torch.cuda.is_available() and torch.cuda.device_count() == conftest.CUDA_DEVICES
    assert resolve_device("auto").type == "cuda"
    assert child_sees(dict(os.environ)) == f"True {conftest.CUDA_DEVICES}"
    assert child_sees({"PATH": "/usr/bin:/bin", **visible_gpus()}) == f"True {conftest.CUDA_DEVICES}"


def test_hiding_and_showing_the_gpus_round_trips(monkeypatch):
    """The mechanism itself, on any machine: a pretend GPU machine's functions and variable come back for a
    gpu test, and go again after it."""
    real = {"is_available": lambda: True, "device_count": lambda: 3, "visible": "0,1,2"}
    monkeypatch.setattr(conftest, "_REAL_CUDA", real)
    with pytest.MonkeyPatch.context() as session:
        hide_gpus(session)
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "" and visible_gpus() == {"CUDA_VISIBLE_DEVICES": ""}
        assert not torch.cuda.is_available() and torch.cuda.device_count() == 0
        with pytest.MonkeyPatch.context() as gpu_test:
            show_gpus(gpu_test)
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2" and torch.cuda.device_count() == 3
            assert torch.cuda.is_available()
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "" and torch.cuda.device_count() == 0


@pytest.mark.slow
def test_gpu_tests_are_skipped_with_the_reason_where_there_is_no_gpu(tmp_path):
    """Where no GPU is visible (here: hidden from the child), a gpu test is skipped and says why."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/gpu/test_activation_cuda.py", "-p", "no:cacheprovider", "-q", "-rs"],
        capture_output=True,
        text=True,
        cwd=SOURCE_ROOT,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(SOURCE_ROOT)},
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" not in done.stdout and " skipped" in done.stdout, done.stdout
    assert conftest.GPU_SKIP_REASON in done.stdout, done.stdout
