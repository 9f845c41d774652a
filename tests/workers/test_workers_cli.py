"""Several worker processes on one study, on real SQLite and PostgreSQL stores; crashes cost one trial."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from tests.conftest import SOURCE_ROOT, write_spec
from tests.postgres import PASSWORD

pytestmark = pytest.mark.slow

# A slow objective (a 60-step attack, a few seconds a trial) so that a signal lands inside a trial.
SLOW = [{"name": "adversarial", "eps": 0.05, "steps": 60, "n": 359}]


def create(cli_fast, tmp_path, checkpoint, stores, name: str, n_trials: int, **sections) -> None:
    write_spec(tmp_path / f"{name}.yaml", checkpoint, name=name, budget={"n_trials": n_trials}, **sections)
    result = cli_fast("study", "create", f"{name}.yaml", "--storage", stores.storage, "--tracking-uri", stores.tracking)
    assert result.returncode == 0, result.stderr


def launcher(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {"PYTHONPATH": str(SOURCE_ROOT), "MLFLOW_DISABLE_TELEMETRY": "true", "PATH": "/usr/bin:/bin"}
    return subprocess.Popen(
        [sys.executable, "-m", "ct_tune.cli", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def trials_of(stores, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=stores.storage.replace("+psycopg", "+psycopg")).get_trials()


def child_runs(stores, name: str) -> list:
    client = MlflowClient(stores.tracking)
    experiment = client.get_experiment_by_name(f"ct-tune/{name}")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return [run for run in runs if "mlflow.parentRunId" in run.data.tags]


def test_three_workers_finish_exactly_the_budget(cli, cli_fast, tmp_path, digits_checkpoint, stores):
    create(cli_fast, tmp_path, digits_checkpoint, stores, "shared", 12)
    result = cli(
        "study",
        "run",
        "shared",
        "--workers",
        "3",
        "--oversubscribe",  # pinned test processes may have fewer cores
        "--storage",
        stores.storage,
        "--tracking-uri",
        stores.tracking,
        "--no-progress",
        # a long grace: on an overloaded machine a live worker's heartbeat can be late, and a retried trial
        # is not what this test is about (test_killed_worker_costs_one_trial_which_is_retried is)
        "--grace",
        "120",
    )
    assert result.returncode == 0, result.stderr
    assert len(re.findall(r"worker \d ready", result.stderr)) == 3
    assert {int(w) for w in re.findall(r"\[w(\d)\] trial", result.stderr)} == {0, 1, 2}

    trials = trials_of(stores, "shared")
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 12
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    runs = {int(r.data.tags["optuna.trial_number"]): r for r in child_runs(stores, "shared")}
    for trial in trials:
        if "ct_tune.discarded" in trial.user_attrs:  # started after the budget was reached elsewhere
            assert trial.number not in runs
            continue
        run = runs.pop(trial.number)
        assert run.info.status != "RUNNING"
        assert run.data.tags["ct_tune.state"] == trial.state.name
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert {k: float(v) for k, v in run.data.params.items() if k.startswith("beta.")} == {
            k: v for k, v in trial.params.items() if k.startswith("beta.")
        }
        if trial.state == TrialState.COMPLETE:
            assert run.data.metrics["accuracy"] == pytest.approx(trial.values[0])
    assert runs == {}  # exactly one run per trial

    # The password of the PostgreSQL URLs never reaches the console, the worker logs or MLflow.
    text = result.stdout + result.stderr + "".join(p.read_text() for p in (tmp_path / "logs" / "shared").glob("*.log"))
    assert PASSWORD not in text
    client = MlflowClient(stores.tracking)
    experiment = client.get_experiment_by_name("ct-tune/shared")
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        assert PASSWORD not in repr(run.data.params) + repr(run.data.tags)


def test_killed_worker_costs_one_trial_which_is_retried(cli_fast, tmp_path, digits_checkpoint):
    from tests.conftest import Stores

    stores = Stores("sqlite", f"sqlite:///{tmp_path}/studies/optuna.db", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    create(cli_fast, tmp_path, digits_checkpoint, stores, "crash", 6, objectives=SLOW)
    proc = launcher(
        tmp_path,
        "study",
        "run",
        "crash",
        "--workers",
        "3",
        "--oversubscribe",
        "--heartbeat",
        "1",
        "--grace",
        "4",
        "--no-progress",
    )
    pids: dict[int, int] = {}
    for line in proc.stderr:
        if match := re.search(r"worker (\d) ready .*\(pid (\d+)\)", line):
            pids[int(match.group(1))] = int(match.group(2))
        if len(pids) == 3:
            break
    # Kill worker 1 inside a trial (several seconds each): once its trial's MLflow run is open, the Optuna
    # trial it belongs to is RUNNING. A fixed sleep missed it when the workers shared one loaded core.
    deadline = time.monotonic() + 120
    while not any(
        run.data.tags.get("ct_tune.worker") == "1" and run.info.status == "RUNNING"
        for run in child_runs(stores, "crash")
    ):
        assert time.monotonic() < deadline, "worker 1 never started a trial"
        time.sleep(0.2)
    os.kill(pids[1], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr  # the other workers finished the budget
    assert "worker 1 was killed by SIGKILL" in stderr

    trials = trials_of(stores, "crash")
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 6
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    failed = [t for t in trials if t.state == TrialState.FAIL and "ct_tune.discarded" not in t.user_attrs]
    assert len(failed) == 1, [(t.number, t.state.name, t.system_attrs, t.user_attrs) for t in trials]
    killed = failed[0]
    retries = [t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == killed.params  # the same betas, run again
    runs = {int(r.data.tags["optuna.trial_number"]): r for r in child_runs(stores, "crash")}
    assert runs[killed.number].info.status == "FAILED"
    assert runs[killed.number].data.tags["ct_tune.state"] == "FAIL"
    assert all(run.info.status != "RUNNING" for run in runs.values())


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        (f"postgresql://someone:{PASSWORD}@127.0.0.1:9/optuna", "cannot open the Optuna storage"),
        ("sqlite:////proc/nowhere/optuna.db", "cannot open the SQLite database /proc/nowhere/optuna.db"),
        ("mongodb://127.0.0.1/optuna", "unsupported database"),
    ],
)
def test_unreachable_storage_at_start_is_one_line(cli_fast, storage, message):
    for command in (("study", "run", "any"), ("study", "list"), ("db", "init")):
        result = cli_fast(*command, "--storage", storage)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.stderr
        assert PASSWORD not in result.stderr + result.stdout


@pytest.mark.postgres
def test_database_going_away_stops_workers_and_a_later_run_resumes(
    cli, cli_fast, tmp_path, digits_checkpoint, postgres
):
    from tests.conftest import Stores

    stores = Stores(
        "postgres", postgres.url(postgres.create_database("optuna")), postgres.url(postgres.create_database("mlflow"))
    )
    create(cli_fast, tmp_path, digits_checkpoint, stores, "outage", 6, objectives=SLOW)
    args = (
        "study",
        "run",
        "outage",
        "--workers",
        "2",
        "--oversubscribe",
        "--heartbeat",
        "1",
        "--grace",
        "3",
        "--storage",
        stores.storage,
        "--tracking-uri",
        stores.tracking,
        "--no-progress",
    )
    proc = launcher(tmp_path, *args)
    for line in proc.stderr:
        if "] trial" in line:  # a first trial finished: the others are mid-flight
            break
    postgres.stop("immediate")
    try:
        _, stderr = proc.communicate(timeout=300)
    finally:
        postgres.start()
    assert proc.returncode == 3, stderr
    last = stderr.strip().splitlines()[-1]
    assert "lost the database" in last and "run 'ct-tune study run outage' again" in last
    assert PASSWORD not in stderr

    again = cli(*args)
    assert again.returncode == 0, again.stderr
    trials = trials_of(stores, "outage")
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 6
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert all(run.info.status != "RUNNING" for run in child_runs(stores, "outage"))


def test_db_init_creates_both_schemas_once(cli_fast, stores):
    first = cli_fast("db", "init", "--storage", stores.storage, "--tracking-uri", stores.tracking, "--json")
    assert first.returncode == 0, first.stderr
    assert first.json()["optuna_schema"].startswith("v")
    again = cli_fast("db", "init", "--storage", stores.storage, "--tracking-uri", stores.tracking)
    assert again.returncode == 0, again.stderr
    assert PASSWORD not in first.stdout + again.stdout
    same = cli_fast("db", "init", "--storage", stores.storage, "--tracking-uri", stores.storage)
    assert same.returncode == 2 and "two databases" in same.stderr


def test_more_cpu_workers_than_cores_is_refused_before_anything_starts(cli_fast, tmp_path, digits_checkpoint):
    from ct_tune.workers import available_cores

    from tests.conftest import Stores

    stores = Stores("sqlite", f"sqlite:///{tmp_path}/studies/optuna.db", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    create(cli_fast, tmp_path, digits_checkpoint, stores, "many", 3)
    result = cli_fast("study", "run", "many", "--workers", "1000", "--devices", "cpu", "--no-progress")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pass --workers {available_cores()} or fewer, or --oversubscribe" in lines[0]
    assert not (tmp_path / "logs").exists()
    assert {t.state for t in trials_of(stores, "many")} <= {TrialState.WAITING}  # the enqueued baseline only


def test_ctrl_c_while_workers_start_stops_them_all(cli_fast, tmp_path, digits_checkpoint):
    """More workers than cores (--oversubscribe: one warning line), Ctrl-C to the launcher alone while they
    load: every worker is gone within seconds, exit 130, no traceback, no RUNNING trial."""
    from ct_tune.workers import available_cores

    from tests.conftest import Stores

    stores = Stores("sqlite", f"sqlite:///{tmp_path}/studies/optuna.db", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    create(cli_fast, tmp_path, digits_checkpoint, stores, "early", 6)
    workers = available_cores() + 1
    proc = launcher(tmp_path, "study", "run", "early", "--workers", str(workers), "--oversubscribe", "--no-progress")
    lines: list[str] = []
    started: set[int] = set()
    try:
        for line in proc.stderr:
            lines.append(line)
            if f"{workers} worker(s)" in line:
                break
        deadline = time.monotonic() + 60
        while len(started) < workers and time.monotonic() < deadline:  # all started, none loaded yet
            started = {
                int(p.name)
                for p in Path("/proc").iterdir()
                if p.name.isdigit() and _parent(p) == proc.pid and b"ct_tune.search.worker" in _cmdline(p)
            }
            time.sleep(0.02)
        assert len(started) == workers, "".join(lines)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=60)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    stderr = "".join(lines) + rest
    assert proc.returncode == 130, stderr
    assert stderr.count(f"warning: {workers} CPU workers share") == 1, stderr
    assert "Traceback" not in stderr and "Resume with: ct-tune study run early" in stderr
    assert elapsed < 5, elapsed
    assert not [pid for pid in started if Path(f"/proc/{pid}").exists()]
    assert not [t for t in trials_of(stores, "early") if t.state == TrialState.RUNNING]


def _parent(proc_dir: Path) -> int:
    with contextlib.suppress(OSError):
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    return -1


def _cmdline(proc_dir: Path) -> bytes:
    with contextlib.suppress(OSError):
        return (proc_dir / "cmdline").read_bytes()
    return b""
