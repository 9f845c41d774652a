"""Planning workers over devices: CPU processes split the cores, GPUs one each, bad lists one line."""

from __future__ import annotations

from ct_tune import InputError
from ct_tune.workers import WorkerPlan, available_cores, check_cores, plan_workers

import pytest
import torch


def test_cpu_workers_split_the_cores():
    cores = available_cores()
    assert cores >= 1
    assert plan_workers(None, "cpu") == [WorkerPlan(0, "cpu", None, cores)]
    two = plan_workers(2, "cpu")
    assert [plan.index for plan in two] == [0, 1] and {plan.threads for plan in two} == {max(1, cores // 2)}
    assert all(plan.device == "cpu" and plan.visible_gpu is None for plan in two)
    many = plan_workers(cores * 3, " CPU ")  # more than the cores only when asked, then one thread each
    assert len(many) == cores * 3 and {plan.threads for plan in many} == {1}


def test_auto_without_gpus_is_cpu():
    """Runs on every machine: a test not marked gpu sees none (tests/conftest.py hides a machine's GPUs)."""
    assert not torch.cuda.is_available()
    assert plan_workers(None, "auto") == [WorkerPlan(0, "cpu", None, available_cores())]
    assert [plan.device for plan in plan_workers(2, "auto")] == ["cpu", "cpu"]


@pytest.mark.parametrize(
    ("workers", "devices", "message"),
    [
        (0, "cpu", "--workers must be at least 1, not 0"),
        (-2, "auto", "--workers must be at least 1, not -2"),
        (None, "tpu", "--devices: 'tpu' is not cpu, auto, or a list like cuda:0,cuda:1"),
        (None, "cuda:0,gpu1", "--devices: 'gpu1' is not cpu"),
        (None, "cuda:x", "--devices: 'cuda:x' is not cpu"),
        (None, "cuda:-1", "--devices: 'cuda:-1' is not cpu"),
        (None, "cuda:0,", "--devices: '' is not cpu"),
    ],
)
def test_bad_workers_and_devices_are_one_line(workers, devices, message):
    with pytest.raises(InputError) as error:
        plan_workers(workers, devices)
    assert "\n" not in str(error.value) and message in str(error.value)


@pytest.mark.parametrize("devices", ["cuda", "cuda:0", "cuda:0,cuda:1", "CUDA:1"])
def test_gpus_are_refused_without_cuda(devices):
    with pytest.raises(InputError) as error:
        plan_workers(None, devices)
    assert "asks for GPUs, but this machine has no usable CUDA GPU; use cpu" in str(error.value)


@pytest.mark.gpu
def test_auto_with_gpus_is_one_worker_per_gpu():
    count = torch.cuda.device_count()
    assert count >= 1
    plans = plan_workers(None, "auto")
    assert [(p.index, p.device, p.visible_gpu) for p in plans] == [(i, "cuda", str(i)) for i in range(count)]
    assert [p.visible_gpu for p in plan_workers(count + 1, "auto")] == [str(i % count) for i in range(count + 1)]


@pytest.mark.gpu
def test_one_worker_per_listed_gpu():
    count = torch.cuda.device_count()
    plans = plan_workers(None, "cuda:0")
    assert [(p.device, p.visible_gpu) for p in plans] == [("cuda", "0")]
    assert [p.visible_gpu for p in plan_workers(3, "cuda:0")] == ["0", "0", "0"]
    with pytest.raises(InputError, match=f"GPU {count} does not exist"):
        plan_workers(None, f"cuda:{count}")


def test_more_cpu_workers_than_cores_only_when_asked():
    cores = available_cores()
    assert check_cores(plan_workers(cores, "cpu"), oversubscribe=False) is None
    too_many = plan_workers(cores + 1, "cpu")
    with pytest.raises(InputError) as refused:
        check_cores(too_many, oversubscribe=False)
    assert str(refused.value) == (
        f"--workers {cores + 1}: more CPU workers than the {cores} core(s) this process may use; "
        f"pass --workers {cores} or fewer, or --oversubscribe to start them anyway"
    )
    warning = check_cores(too_many, oversubscribe=True)
    assert (
        warning
        == f"warning: {cores + 1} CPU workers share {cores} core(s) (--oversubscribe): each runs slower than alone"
    )
    assert check_cores([WorkerPlan(i, "cuda", "0", 1) for i in range(cores + 1)], oversubscribe=False) is None
