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
