"""Fault injection on real stores: a worker or the launcher SIGKILLed, the database stopped mid-run, Ctrl-C
with one worker and with several. After each fault Optuna (the truth) and MLflow agree trial by trial,
nothing is left RUNNING, the console ends with one line and holds no traceback, and running again
finishes the study.

SQLite has no server to stop (an open SQLite connection survives its file being moved or deleted), so the
database-stopped cases run on PostgreSQL; a killed worker runs on SQLite here and on PostgreSQL under the
cluster engines (tests/workers/test_ray.py, test_slurm.py); every other fault runs on both.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from tests.conftest import Stores
from tests.helpers import (
    SLOW_OBJECTIVES,
    assert_agree,
    create_study_cli,
    read_until,
    start_launch,
    wait_until_inside_a_trial,
)
from tests.postgres import PASSWORD

pytestmark = pytest.mark.slow


def assert_one_line_at_the_end(stderr: str, expected: str) -> None:
    """Whatever was printed before, the fault is reported by exactly one line, the last, and no traceback."""
    assert "Traceback" not in stderr and PASSWORD not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert expected in lines[-1], stderr
    assert sum(expected in line for line in lines) == 1, stderr


def finish(cli, stores: Stores, name: str, options: list[str], n_trials: int) -> None:
    """Running again completes the study, and the two stores still agree."""
    again = cli("study", "run", name, *options, "--no-progress")
    assert again.returncode == 0, again.stderr
    trials = assert_agree(stores, name)
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == n_trials


def exited(pid: int) -> bool:
    """True once ``pid`` is gone or a zombie (its parent, the killed launcher, cannot reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


READY = r"worker (\d) ready .*\(pid (\d+)\)"


def create(cli_fast, tmp_path: Path, checkpoint: Path, stores: Stores, name: str, n_trials: int, **sections):
    """A study of slow trials (``SLOW_OBJECTIVES``) on ``stores``; returns the store options."""
    return create_study_cli(
        cli_fast, tmp_path, checkpoint, stores, name, n_trials, objectives=SLOW_OBJECTIVES, **sections
    )


# The backend matters for heartbeats: SQLite here, PostgreSQL under the cluster engines, which restart
# (Ray, tests/workers/test_ray.py) or do not restart (SLURM, tests/workers/test_slurm.py) a killed worker.
@pytest.mark.parametrize("stores", ["sqlite"], indirect=True)
def test_sigkill_of_a_worker_costs_one_trial_which_is_retried(cli, cli_fast, tmp_path, digits_checkpoint, stores):
    options = create(cli_fast, tmp_path, digits_checkpoint, stores, "crash", 4)
    proc = start_launch(
        tmp_path, "study", "run", "crash", *options, "--workers", "2", "--heartbeat", "1", "--grace", "4"
    )
    seen: list[str] = []
    pids = {}
    while len(pids) < 2:
        match = read_until(proc, READY, seen, timeout=300)
        pids[int(match.group(1))] = int(match.group(2))
    wait_until_inside_a_trial(stores, "crash", worker=1)
    os.kill(pids[1], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr  # the other workers finished the budget
    assert "worker 1 was killed by SIGKILL" in stderr and "Traceback" not in stderr

    trials = assert_agree(stores, "crash")
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 4
    failed = [t for t in trials if t.state == TrialState.FAIL and "ct_tune.discarded" not in t.user_attrs]
    assert len(failed) == 1, [(t.number, t.state.name, t.system_attrs, t.user_attrs) for t in trials]
    retries = [t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == failed[0].number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == failed[0].params  # the same betas, run again


def test_sigkill_of_the_launcher_lets_workers_end_their_trials(cli, cli_fast, tmp_path, digits_checkpoint, stores):
    options = create(cli_fast, tmp_path, digits_checkpoint, stores, "orphaned", 4)
    proc = start_launch(tmp_path, "study", "run", "orphaned", *options, "--workers", "2", "--no-progress")
    seen: list[str] = []
    pids = []
    while len(pids) < 2:
        pids.append(int(read_until(proc, READY, seen, timeout=300).group(2)))
    read_until(proc, r"\] trial", seen, timeout=300)  # a first trial ended: the other worker is inside one
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 180
    while not all(exited(pid) for pid in pids):  # each ends the trial it was scoring, then stops
        assert time.monotonic() < deadline, "a worker kept running after its launcher died"
        time.sleep(0.5)
    trials = assert_agree(stores, "orphaned")  # what was scored is COMPLETE in both, nothing failed for it
    assert not [t for t in trials if t.state == TrialState.FAIL and "ct_tune.discarded" not in t.user_attrs]
    logs = "".join(path.read_text() for path in (tmp_path / "logs" / "orphaned").glob("*.log"))
    assert "the launcher is gone; stopped after ending its trial" in logs and "Traceback" not in logs
    finish(cli, stores, "orphaned", options, 4)


def inside_their_evaluations(study: optuna.Study, workers: int, n: int, chunk: int) -> set[int] | None:
    """The numbers of the RUNNING trials if there is one per worker and each still has at least one chunk of
    ``chunk`` samples of its ``n`` to evaluate (it reported no running value past ``n - chunk``), else None.
    A Ctrl-C sent a few milliseconds later lands inside each of their evaluations."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if len(running) == workers and all(max(t.intermediate_values, default=0) < n - chunk for t in running):
        return {t.number for t in running}
    return None


@pytest.mark.parametrize(
    ("stores", "workers"),
    [("sqlite", 1), pytest.param("postgres", 2, marks=pytest.mark.postgres)],  # each mode, each database
    indirect=["stores"],
)
def test_ctrl_c_fails_the_running_trials_in_both_stores(cli, cli_fast, tmp_path, digits_checkpoint, stores, workers):
    # A pruner that never prunes (it waits for 1,000 finished trials) has each trial report its running value
    # to Optuna after every chunk of 128 samples (of 359): how far each evaluation has come.
    never_prunes = {"name": "median", "n_startup_trials": 1000}
    options = create(cli_fast, tmp_path, digits_checkpoint, stores, "stopped", 4, pruner=never_prunes)
    proc = start_launch(
        tmp_path, "study", "run", "stopped", *options, "--workers", str(workers), "--no-progress", own_group=True
    )
    seen: list[str] = []
    read_until(proc, r"worker \d (on|ready)", seen, timeout=300)  # the model is loaded, trials start
    study = optuna.load_study(study_name="stopped", storage=stores.storage)
    deadline = time.monotonic() + 120
    while (running := inside_their_evaluations(study, workers, SLOW_OBJECTIVES[0]["n"], chunk=128)) is None:
        assert time.monotonic() < deadline, f"no moment with every worker inside an evaluation: {''.join(seen)}"
        time.sleep(0.05)
    # a terminal's Ctrl-C reaches the launcher and its workers at once (to the launcher alone, the workers
    # get 10 s to see it first: on a quiet machine they could finish the whole budget in that time)
    os.killpg(proc.pid, signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(seen) + rest
    assert_one_line_at_the_end("".join(seen) + rest, "interrupted")
    assert "Resume with: ct-tune study run stopped" in rest
    trials = assert_agree(stores, "stopped")
    failed = {t.number for t in trials if t.state == TrialState.FAIL and "ct_tune.discarded" not in t.user_attrs}
    assert failed == running, [(t.number, t.state.name, t.intermediate_values) for t in trials]
    finish(cli, stores, "stopped", options, 4)


@pytest.mark.postgres
@pytest.mark.parametrize("workers", [1, 2])
def test_database_stopped_mid_run_is_one_line_and_a_later_run_resumes(
    cli, cli_fast, tmp_path, digits_checkpoint, postgres, workers
):
    stores = Stores(
        "postgres", postgres.url(postgres.create_database("optuna")), postgres.url(postgres.create_database("mlflow"))
    )
    options = create(cli_fast, tmp_path, digits_checkpoint, stores, "outage", 4)
    timing = ["--heartbeat", "1", "--grace", "3"]
    proc = start_launch(
        tmp_path, "study", "run", "outage", *options, "--workers", str(workers), *timing, "--no-progress"
    )
    seen: list[str] = []
    read_until(proc, r"trial +\d+ COMPLETE", seen, timeout=300)  # a first trial ended: the next is mid-flight
    postgres.stop("immediate")
    try:
        _, rest = proc.communicate(timeout=300)
    finally:
        postgres.start()
    assert proc.returncode == 3, "".join(seen) + rest
    expected = "lost the database" if workers > 1 else "the Optuna storage stopped answering"
    assert_one_line_at_the_end("".join(seen) + rest, expected)
    assert "run 'ct-tune study run outage' again" in rest.strip().splitlines()[-1].lower()
    finish(cli, stores, "outage", [*options, *timing], 4)
