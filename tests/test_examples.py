"""The example project (examples/own-lightning-project) run as its README says: a user's own LightningModule
and LightningDataModule, trained briefly, then searched with 2 workers through the Python API and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.conftest import SOURCE_ROOT, on_the_whole_machine

pytestmark = pytest.mark.slow

EXAMPLE = SOURCE_ROOT / "examples" / "own-lightning-project"


def run(command: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SOURCE_ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("CT_TUNE_STORAGE", None)
    proc = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, preexec_fn=on_the_whole_machine
    )
    assert proc.returncode == 0, f"{command}: {proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("example") / "own-lightning-project"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("checkpoints", "studies", "mlruns", "__pycache__"))
    run([sys.executable, "train.py", "--epochs", "1"], root)
    assert (root / "checkpoints" / "litcnn.ckpt").is_file()
    return root


def test_the_example_through_the_python_api_with_two_workers(project):
    proc = run([sys.executable, "search.py"], project)
    assert "8 trials finished (budget reached)" in proc.stdout
    import optuna

    study = optuna.load_study(study_name="litcnn-mnist-api", storage=f"sqlite:///{project}/studies/optuna.db")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 8
    assert {t.user_attrs.get("ct_tune.kind", "sampled") for t in study.trials} >= {"baseline"}
    assert json.loads((project / "profiles" / "litcnn-robust.json").read_text())["model"] == "LitCNN"
    assert "test" in proc.stdout  # the report's rows


def test_the_example_through_the_cli_with_two_workers(project):
    script = Path(sys.executable).parent / "ct-tune"  # the installed command: the project imports from the cwd
    command = [str(script)] if script.exists() else [sys.executable, "-m", "ct_tune.cli"]
    created = run([*command, "study", "create", "study.yaml", "--name", "litcnn-mnist-cli", "--json"], project)
    assert json.loads(created.stdout)["units"] == ["block1.relu", "block2.relu", "relu()"]
    run(
        [
            *command,
            "study",
            "run",
            "litcnn-mnist-cli",
            "--workers",
            "2",
            "--n-trials",  # half the spec's budget: the API test above runs all of it
            "4",
            "--oversubscribe",
            "--devices",
            "cpu",
            "--no-progress",
        ],
        project,
    )
    status = json.loads(run([*command, "study", "status", "litcnn-mnist-cli", "--json"], project).stdout)
    assert status["trials"]["COMPLETE"] == 4 and status["trials"]["RUNNING"] == 0
    report = json.loads(run([*command, "study", "report", "litcnn-mnist-cli", "--json"], project).stdout)
    assert report["test_samples"] == 1000 and report["trials"][-1]["is_baseline"]
    logs = "".join(path.read_text() for path in (project / "logs" / "litcnn-mnist-cli").glob("*.log"))
    assert "Traceback" not in logs
