"""`ct-tune ui` serves the study's MLflow store and prints a URL that answers; a signal stops it and all
that it started; bad --port / --host values are one line."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import SOURCE_ROOT, write_spec
from tests.helpers import descendants, process_table, read_until, spawn

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
    proc = spawn(
        [sys.executable, "-m", "ct_tune.cli", "ui", "--study", "watched", "--port", str(port), "--json"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        payload = json.loads(read_until(proc, r"^\{.*\}$", [], timeout=120, stream="stdout").group(0))
        assert (
            payload["url"]
            == f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        )
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}"
        with urllib.request.urlopen(api, timeout=30) as response:
            assert json.load(response)["experiment"]["name"] == "ct-tune/watched"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode == 0


def test_the_url_is_a_route_of_the_installed_mlflow_ui():
    """The runs table's route and the workflow switch exist in the MLflow UI that ships with the package
    (a newer MLflow that renames them fails here, not in front of a user)."""
    import mlflow

    bundle = "".join(
        path.read_text(errors="ignore")
        for path in (Path(mlflow.__file__).parent / "server/js/build/static/js").glob("main.*.js")
    )
    assert '"/experiments/:experimentId/runs"' in bundle
    assert 'MACHINE_LEARNING="machine_learning"' in bundle and '.get("workflowType")' in bundle


def test_ui_refuses_a_busy_port(cli_fast, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = cli_fast("ui", "--port", str(busy.getsockname()[1]))
    assert result.returncode == 2
    assert "is in use" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--port", "99999"), "--port must be between 1 and 65535, not 99999"),
        (("--port", "0"), "--port must be between 1 and 65535, not 0"),
        (("--host", "999.1.1.1"), "--host '999.1.1.1' is not an address or host name"),
        (("--host", "192.0.2.1"), "--host 192.0.2.1 is not an address of this machine"),  # TEST-NET-1: nobody's
    ],
)
def test_ui_bad_port_or_host_is_one_line(cli_fast, tmp_path, args, message):
    result = cli_fast("ui", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "mlflow.db").exists()  # refused before the store is touched


def alive(pids: set[int], groups: set[int]) -> set[int]:
    """Of ``pids`` and the members of ``groups``, those still running (zombies are gone for good)."""
    return {
        pid for pid, (_, group, state) in process_table().items() if (pid in pids or group in groups) and state != "Z"
    }


def command_line(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


@pytest.mark.parametrize(
    ("sig", "jobs"),
    [(signal.SIGTERM, "false"), (signal.SIGHUP, "true")],
    ids=["sigterm", "sighup-with-mlflow-job-consumers"],
)
def test_a_signal_stops_the_ui_and_everything_it_started(tmp_path, sig, jobs):
    """SIGTERM (a scheduler, kill) and SIGHUP (a closed terminal) to ct-tune alone: it exits and leaves no
    mlflow server, uvicorn or huey job consumer behind, and the port is free again."""
    port = free_port()
    env = {
        "PYTHONPATH": str(SOURCE_ROOT),
        "PATH": "/usr/bin:/bin",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": jobs,
    }
    command = [sys.executable, "-m", "ct_tune.cli", "ui", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    proc = spawn(
        [*command, "--port", str(port), "--json"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group, as a terminal gives a command
    )
    started: set[int] = set()
    groups = {proc.pid}
    try:
        first = read_until(proc, r"^\{.*\}$", [], timeout=120, stream="stdout").group(0)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as response:
            assert response.status == 200
        deadline = time.monotonic() + 120
        while True:  # with job execution on, wait for its consumers: they start after the server answers
            table = process_table()
            started = descendants(proc.pid, table)
            lines = [command_line(pid) for pid in started]
            if jobs == "false" or any("huey_consumer" in line for line in lines):
                break
            assert time.monotonic() < deadline, lines
            time.sleep(0.5)
        groups |= {table[pid][1] for pid in started if pid in table}
        assert json.loads(first)["pid"] in started
        assert any("uvicorn" in line for line in lines), lines
        assert any("huey_consumer" in line for line in lines) == (jobs == "true"), lines

        sent = time.monotonic()
        os.kill(proc.pid, sig)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr
        assert "Traceback" not in stderr, stderr
        while (left := alive(started, groups)) and time.monotonic() < sent + 15:
            time.sleep(0.1)
        assert not left, [command_line(pid) for pid in left]
        assert time.monotonic() - sent < 15
        with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
            probe.connect(("127.0.0.1", port))
    finally:
        for pid in alive(started | {proc.pid}, groups):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=10)


@pytest.mark.postgres
def test_ui_keeps_the_store_password_off_every_command_line(tmp_path, postgres):
    """`ps` shows every process's command line to every user of the machine: the server gets the store's
    URL through its environment (readable by its own user only), and no process it starts shows it."""
    from ct_tune.tracking import start_ui

    from tests.postgres import PASSWORD

    server = start_ui(postgres.url(postgres.create_database("ui")), port=free_port())
    try:
        group = [server.pid, *descendants(server.pid, process_table())]
        lines = [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode() for pid in group]
        assert len(lines) >= 2 and any("mlflow" in line for line in lines)  # the server and what it started
        assert not [line for line in lines if PASSWORD in line]
        assert PASSWORD not in server.tracking_uri
    finally:
        server.stop()
