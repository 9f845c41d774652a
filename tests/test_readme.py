"""README.md must not rot: every Python example runs as written, every ct-tune command line parses.

The commands' behaviour is tested where it lives (quickstart and pipelines in test_pipeline, the study
commands in test_study, ...); here each line a user would copy is checked against the real parser, so a
renamed option or command fails the suite.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import SOURCE_ROOT, on_the_whole_machine, visible_gpus

README = (SOURCE_ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
BASH_BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL)


def _commands() -> list[str]:
    """Every ``ct-tune ...`` invocation in the bash blocks (continuations joined, comments and shell
    plumbing around it cut off)."""
    found = []
    for block in BASH_BLOCKS:
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line)
            for match in re.finditer(r"(?<![\w/-])ct-tune(?:\s+[^\"&;|]*)?", line):
                found.append(match.group(0).strip())
    return found


COMMANDS = _commands()


def test_readme_has_examples():
    assert PYTHON_BLOCKS and len(COMMANDS) > 20
    assert "ct-tune quickstart" in COMMANDS  # the main command


@pytest.mark.parametrize("command", COMMANDS)
def test_command_line_parses(command):
    from ct_tune.cli import build_parser

    argv = ["x" if token == "..." else token for token in shlex.split(command)[1:]]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        pytest.fail(f"{command!r} does not parse (exit {exit_.code})")
    assert args.command is not None


@pytest.fixture
def readme_workdir(tmp_path: Path, digits_checkpoint: Path) -> Path:
    """What the quickstart leaves behind: the pretrained checkpoint and a per-block profile of it."""
    import ct_tune
    from ct_tune.models import load_checkpoint

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "cifar_resnet_small-digits-seed0.pt").symlink_to(digits_checkpoint)
    model = load_checkpoint(digits_checkpoint).eval()
    betas = {"stem": 0.72, "layer1.0": 0.71, "layer2.0": 0.74, "layer3.0": 0.8}
    handle = ct_tune.steer(model.net, betas, granularity="block", example_input=torch.zeros(1, 1, 8, 8))
    (tmp_path / "profiles").mkdir()
    handle.profile().save(tmp_path / "profiles" / "quickstart.json")
    handle.remove()
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_example_runs(index, readme_workdir):
    proc = subprocess.run(
        [sys.executable, "-c", PYTHON_BLOCKS[index]],
        cwd=readme_workdir,
        capture_output=True,
        text=True,
        env={
            "PYTHONPATH": str(SOURCE_ROOT),
            "PATH": "/usr/bin:/bin",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            **visible_gpus(),
        },
        timeout=600,
        preexec_fn=on_the_whole_machine,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
