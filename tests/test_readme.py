"""Every Python example in README.md runs as written (documentation must not rot)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import SOURCE_ROOT

README = (SOURCE_ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


def test_readme_has_python_examples():
    assert PYTHON_BLOCKS


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_example_runs(index, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", PYTHON_BLOCKS[index]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SOURCE_ROOT), "PATH": "/usr/bin:/bin", "MLFLOW_DISABLE_TELEMETRY": "true"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
