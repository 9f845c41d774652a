"""``ct-tune doctor`` as a user runs it, in a fresh process: the lines, ``--json``, the exit codes.

Each test that compiles the fused kernels gets a fresh inductor cache (``TORCHINDUCTOR_CACHE_DIR``): a kernel
cached on disk by an earlier run would hide a compiler that fails now.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

PASSWORD = "secret"
NAMES = [
    "ct-tune",
    "python",
    "torch",
    "torchvision",
    "lightning",
    "optuna",
    "mlflow",
    "sqlalchemy",
    "other packages",
]


def by_name(stdout: str) -> dict[str, str]:
    """The check lines by name (status in 9 columns, the name in 20), without the summary line."""
    return {line[9:29].strip(): line for line in stdout.splitlines()[:-1]}


def doctor(tmp_path: Path, *args: str, **env: str):
    cache = tmp_path / "inductor-cache"
    cache.mkdir(exist_ok=True)
    return run_cli("doctor", *args, cwd=tmp_path, env={"TORCHINDUCTOR_CACHE_DIR": str(cache), **env}, timeout=300)


@pytest.mark.slow
def test_all_ok_here_as_one_json_object(tmp_path):
    stores = ("--storage", f"sqlite:///{tmp_path}/s/optuna.db", "--tracking-uri", f"sqlite:///{tmp_path}/s/mlflow.db")
    result = doctor(tmp_path, "--json", *stores)
    assert result.returncode == 0, result.stdout + result.stderr
    payload = json.loads(result.stdout)  # the whole of stdout is the one object
    assert set(payload) == {"ok", "counts", "seconds", "checks"} and payload["ok"] is True
    checks = payload["checks"]
    assert all(set(check) == {"group", "name", "status", "detail", "fix"} for check in checks)
    assert all(check["status"] in ("ok", "skipped") and check["fix"] is None for check in checks), checks
    names = [check["name"] for check in checks]
    assert names[: len(NAMES)] == NAMES
    assert {"fused kernel cpu", "optuna storage", "mlflow store", "smoke cpu"} <= set(names)
    lines = {check["name"]: check for check in checks}
    assert lines["fused kernel cpu"]["detail"].startswith(
        "C++ (inductor) forward and backward compile and match the plain math"
    )
    assert "fp32 eager " in lines["smoke cpu"]["detail"] and ", fused " in lines["smoke cpu"]["detail"]
    if "gpu" in lines:  # no CUDA GPU here
        assert lines["gpu"] == {
            "group": "gpus",
            "name": "gpu",
            "status": "skipped",
            "detail": "no CUDA GPU: the CPU will be used",
            "fix": None,
        }
    assert payload["counts"]["ok"] + payload["counts"]["skipped"] == len(checks)
    assert "doctor: compiling the fused CT kernels on cpu" in result.stderr  # progress on stderr
    assert not (tmp_path / "s").exists()  # a check creates nothing


@pytest.mark.slow
def test_no_compiler_and_an_unreachable_store_are_failed_lines_with_their_fix(tmp_path):
    storage = f"postgresql://user:{PASSWORD}@127.0.0.1:1/db"
    result = doctor(
        tmp_path, "--storage", storage, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", CXX="/nonexistent"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = by_name(result.stdout)
    kernel = lines["fused kernel cpu"]
    assert kernel.startswith("failed   fused kernel cpu")
    assert "InvalidCxxCompiler: No working C++ compiler found" in kernel
    assert (
        "; fix: $CXX is '/nonexistent': name a C++ compiler that runs (or unset it), or set CT_TUNE_FUSED=0" in kernel
    )
    store = lines["optuna storage"]
    assert store.startswith(
        "failed   optuna storage       cannot open the Optuna storage postgresql+psycopg://user:***@127.0.0.1:1/db"
    )
    assert "(from --storage); fix: start the database, or correct --storage, $CT_TUNE_STORAGE" in store
    # the eager formula still runs, and is right: the smoke test passes without the kernels
    smoke = lines["smoke cpu"]
    assert smoke.startswith("ok       smoke cpu") and "fused" not in smoke
    if "gpu" in lines:  # no CUDA GPU here
        assert lines["gpu"] == "skipped  gpu                  no CUDA GPU: the CPU will be used"
    assert [name for name, line in lines.items() if line.startswith("failed")] == ["fused kernel cpu", "optuna storage"]
    assert result.stdout.splitlines()[-1].endswith("not ready: fix the failed lines above")
    assert " 2 failed, " in result.stdout.splitlines()[-1]


@pytest.mark.slow
def test_a_package_out_of_range_or_that_does_not_import(tmp_path):
    """A broken install, made for real: an ``mlflow`` that raises on import, and an ``optuna`` whose installed
    metadata says 4.0.0, both found first on the path."""
    shadow = tmp_path / "shadow"
    (shadow / "mlflow").mkdir(parents=True)
    (shadow / "mlflow" / "__init__.py").write_text("raise ImportError('half-installed mlflow')\n")
    (shadow / "optuna-4.0.0.dist-info").mkdir()
    (shadow / "optuna-4.0.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: optuna\nVersion: 4.0.0\n")
    from tests.conftest import SOURCE_ROOT

    result = doctor(tmp_path, "--only", "versions", PYTHONPATH=f"{shadow}:{SOURCE_ROOT}")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = by_name(result.stdout)
    assert list(lines) == NAMES
    assert lines["optuna"] == (
        "failed   optuna               4.0.0 (ct-tune needs >=5.0,<6); fix: pip install 'optuna<6,>=5.0'"
    )
    assert lines["mlflow"].startswith("failed   mlflow               3.") and lines["mlflow"].endswith(
        "is installed but does not import: ImportError: half-installed mlflow; fix: reinstall it: "
        "pip install 'mlflow<4,>=3.0'"
    )
    assert lines["torch"].startswith("ok       torch")
