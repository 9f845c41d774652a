"""Shared test fixtures: run the real CLI in a subprocess, keep MLflow quiet and offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import ct_tune

import pytest

SOURCE_ROOT = Path(ct_tune.__file__).resolve().parents[1]


MACHINE_CORES: set[int] = set()  # the cores before this test process was pinned to its share (empty: not pinned)


def on_the_whole_machine() -> None:
    """``preexec_fn`` for a user-facing script (the README's, the example project's): it runs on every core,
    as it would for a user, not on the pinned share of this test process (which refuses its 2 workers)."""
    if MACHINE_CORES:
        os.sched_setaffinity(0, MACHINE_CORES)


def pytest_configure(config: pytest.Config) -> None:
    _restore_ctrl_c()
    _pin_to_a_share_of_the_cores()
    _a_data_cache_of_this_run()
    _gpus_for_gpu_tests_only()


# ------------------------------------------------------------------------------------------------------
# GPUs: tests marked ``gpu`` run on the machine's GPUs (and are skipped, with the reason, where there are
# none); every other test runs as on a machine without one. ``run.device`` defaults to ``auto``, which picks
# a GPU where there is one: a spec, an evaluation or a CLI command that does not name its device would
# otherwise score on CUDA there, with other numbers and other code paths than the CPU the test means.
# On a machine with a GPU the whole session hides it (CUDA_VISIBLE_DEVICES="" for every process a test
# starts, ``torch.cuda.is_available()`` False in this one), from configure on, so session and module
# fixtures are covered too; an autouse fixture shows it again for the length of each ``gpu`` test.
# Where no GPU is visible, nothing changes. Child processes started with an environment of their own
# pass ``visible_gpus()`` on.

CUDA_DEVICES = 0  # GPUs this machine has (set at configure, before anything is hidden)
GPU_SKIP_REASON = "needs a CUDA GPU: torch.cuda.is_available() is False on this machine"
_REAL_CUDA: dict[str, object] = {}  # torch.cuda functions and $CUDA_VISIBLE_DEVICES as they were


def _gpus_for_gpu_tests_only() -> None:
    global CUDA_DEVICES
    import torch

    if not torch.cuda.is_available():
        return
    # The runtime counts its devices once, now, while $CUDA_VISIBLE_DEVICES is the machine's own: a CUDA
    # context a test creates later (hidden or not) still sees every GPU, so the gpu tests after it work.
    count = getattr(torch._C, "_cuda_getDeviceCount", torch.cuda.device_count)()
    if count < 1:
        return
    CUDA_DEVICES = count
    _REAL_CUDA.update(
        is_available=torch.cuda.is_available,
        device_count=torch.cuda.device_count,
        visible=os.environ.get("CUDA_VISIBLE_DEVICES"),
    )
    hide_gpus(pytest.MonkeyPatch())  # never undone: the session's default


def hide_gpus(patch: pytest.MonkeyPatch) -> None:
    """This process and every process it starts from here on see no GPU (as on a CPU-only machine)."""
    import torch

    patch.setenv("CUDA_VISIBLE_DEVICES", "")
    patch.setattr(torch.cuda, "is_available", lambda: False)
    patch.setattr(torch.cuda, "device_count", lambda: 0)


def show_gpus(patch: pytest.MonkeyPatch) -> None:
    """Undo ``hide_gpus`` for one test: the machine's GPUs, as the session found them."""
    import torch

    if _REAL_CUDA.get("visible") is None:
        patch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        patch.setenv("CUDA_VISIBLE_DEVICES", str(_REAL_CUDA["visible"]))
    patch.setattr(torch.cuda, "is_available", _REAL_CUDA["is_available"])
    patch.setattr(torch.cuda, "device_count", _REAL_CUDA["device_count"])


def visible_gpus() -> dict[str, str]:
    """What a child process started with an environment of its own needs to see the GPUs this test sees:
    ``{"CUDA_VISIBLE_DEVICES": ...}`` where that is set (empty while a test hides them), else nothing."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return {} if value is None else {"CUDA_VISIBLE_DEVICES": value}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if CUDA_DEVICES:
        return
    skip = pytest.mark.skip(reason=GPU_SKIP_REASON)
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _gpus_only_for_gpu_tests(request: pytest.FixtureRequest):
    """A test marked ``gpu`` sees the machine's GPUs; the others run as on a CPU-only machine."""
    if CUDA_DEVICES and request.node.get_closest_marker("gpu") is not None:
        with pytest.MonkeyPatch.context() as patch:
            show_gpus(patch)
            yield
    else:
        yield


def _a_data_cache_of_this_run() -> None:
    """Decoded splits go to a cache folder of this test process (and the commands it starts), not the
    user's ~/.cache; a test that checks the cache itself names its own folder."""
    import tempfile

    os.environ["CT_TUNE_CACHE"] = tempfile.mkdtemp(prefix="ct-tune-cache-")


def _restore_ctrl_c() -> None:
    """A test run started in the background by a shell without job control has SIGINT ignored (POSIX), and
    every process it starts inherits that: the Ctrl-C tests would test nothing. A Python handler here
    makes the processes the tests start get the default disposition again."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _pin_to_a_share_of_the_cores() -> None:
    """Under pytest-xdist (``-n``), give each test process its own share of the cores.

    Torch in every process would otherwise start one OpenMP thread per core, and threads spinning next to
    another process's made forwards many times slower (measured in the steering tests). The share is the
    process's CPU affinity, so the study workers a test launches split that share, not the machine.
    """
    name, count = os.environ.get("PYTEST_XDIST_WORKER", ""), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not name.startswith("gw") or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    MACHINE_CORES.update(cores)
    if len(cores) < count:
        return
    share = cores[int(name[2:]) % count :: count]
    os.sched_setaffinity(0, share)
    import torch

    torch.set_num_threads(len(share))


os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        return json.loads(self.stdout)


def run_cli(
    *args: str, cwd: Path | str | None = None, env: dict[str, str] | None = None, timeout: float = 600
) -> CliResult:
    """Run ``ct-tune ARGS`` as a user would, in a fresh interpreter, with this source tree's package."""
    full_env = {**os.environ, "PYTHONPATH": str(SOURCE_ROOT), "MLFLOW_DISABLE_TELEMETRY": "true", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "ct_tune.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli(tmp_path: Path):
    """``cli("study", "list", ...)`` runs ct-tune with the test's tmp dir as working directory."""

    def _run(*args: str, **kwargs) -> CliResult:
        kwargs.setdefault("cwd", tmp_path)
        return run_cli(*args, **kwargs)

    return _run


@pytest.fixture
def cli_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture):
    """``ct-tune ARGS`` called in this process (no interpreter start-up): for the many short error-path
    tests. End-to-end tests use ``cli``, which runs a real subprocess."""
    from ct_tune.cli import main

    def _run(*args: str, cwd: Path | None = None) -> CliResult:
        monkeypatch.chdir(cwd or tmp_path)
        capfd.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        out, err = capfd.readouterr()
        return CliResult(code, out, err)

    return _run


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default small ResNet pretrained on digits once per test session (~10 s, ~97% val)."""
    from ct_tune.training import PretrainConfig, pretrain

    root = tmp_path_factory.mktemp("pretrained")
    config = PretrainConfig(
        data="digits",
        epochs=6,
        out=str(root / "digits.pt"),
        accelerator="cpu",  # the same checkpoint on a machine with a GPU
        tracking_uri=f"sqlite:///{root}/mlflow.db",
        progress=False,
    )
    before = os.environ.get("MLFLOW_TRACKING_URI")
    result = pretrain(config)
    assert result["val_accuracy"] > 0.9, result
    # Lightning's MLflow logger sets $MLFLOW_TRACKING_URI process-wide; pretrain must put it back.
    assert os.environ.get("MLFLOW_TRACKING_URI") == before
    return Path(result["checkpoint"])


def write_spec(path: Path, checkpoint: Path, **sections) -> Path:
    """A digits study spec on ``checkpoint``; keyword arguments replace top-level sections."""
    import yaml

    spec = {
        "model": {"checkpoint": str(checkpoint)},
        "data": {"name": "digits", "seed": 0},
        "search": {"granularity": "block", "beta": {"low": 0.7, "high": 1.0}, "enqueue_baseline": True},
        "objectives": [{"name": "accuracy"}],
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 3},
        "budget": {"n_trials": 6},
        "run": {"device": "cpu", "batch_size": 128},  # CPU semantics: on a GPU machine too
    }
    spec.update(sections)
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="session")
def postgres():
    """A throw-away PostgreSQL server for the session (see tests/postgres.py)."""
    import shutil
    import tempfile

    from tests.postgres import start_server

    root = Path(tempfile.mkdtemp(prefix="ct-tune-pg-"))  # not under pytest's root-only tmp: the server user must enter
    root.chmod(0o755)
    server = start_server(root / "cluster")
    if server is None:
        shutil.rmtree(root, ignore_errors=True)
        if os.environ.get("CT_TUNE_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL is required here (CT_TUNE_REQUIRE_POSTGRES=1) but its binaries were not found")
        pytest.skip("PostgreSQL is not installed (.ci/run installs it)")
    yield server
    server.stop("immediate")
    shutil.rmtree(root, ignore_errors=True)


@dataclass
class Stores:
    backend: str
    storage: str  # Optuna storage URL
    tracking: str  # MLflow backend store URL (a separate database: both use an alembic_version table)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Stores:
    """The Optuna storage and MLflow store of a test, on every supported backend."""
    if request.param == "sqlite":
        return Stores("sqlite", f"sqlite:///{tmp_path}/studies/optuna.db", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    server = request.getfixturevalue("postgres")
    return Stores(
        "postgres", server.url(server.create_database("optuna")), server.url(server.create_database("mlflow"))
    )


@pytest.fixture(autouse=True)
def _stop_what_the_test_started():
    """Whatever a test started through ``tests.helpers.spawn`` and left running (it failed or timed out
    midway) is killed with its descendants when the test ends."""
    yield
    helpers = sys.modules.get("tests.helpers")  # not imported: nothing was started through it
    if helpers is not None:
        helpers.stop_started()


@pytest.fixture(autouse=True)
def _no_leaked_store_environment():
    """Fail any test that leaves $MLFLOW_TRACKING_URI or $CT_TUNE_STORAGE changed for later tests."""
    before = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "CT_TUNE_STORAGE")}
    yield
    after = {key: os.environ.get(key) for key in before}
    assert after == before, f"the test changed the store environment: {before} -> {after}"
