"""`ct-tune ui` serves the study's MLflow store and prints a URL that answers."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

from tests.conftest import SOURCE_ROOT, write_spec

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_ui_serves_the_study_experiment(cli_fast, tmp_path, digits_checkpoint):
    write_spec(tmp_path / "spec.yaml", digits_checkpoint, name="watched")
    created = cli_fast("study", "create", "spec.yaml", "--json")
    assert created.returncode == 0, created.stderr
    experiment_id = created.json()["mlflow_experiment_id"]
    port = free_port()
    env = {"PYTHONPATH": str(SOURCE_ROOT), "PATH": f"{SOURCE_ROOT}:/usr/bin:/bin", "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ct_tune.cli", "ui", "--study", "watched", "--port", str(port), "--json"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()
        assert first, proc.stderr.read()
        payload = json.loads(first)
        assert payload["url"] == f"http://127.0.0.1:{port}/#/experiments/{experiment_id}"
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}"
        with urllib.request.urlopen(api, timeout=30) as response:
            assert json.load(response)["experiment"]["name"] == "ct-tune/watched"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode == 0


def test_ui_refuses_a_busy_port(cli_fast, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = cli_fast("ui", "--port", str(busy.getsockname()[1]))
    assert result.returncode == 2
    assert "is in use" in result.stderr
