"""Several worker processes on one study, on real SQLite and PostgreSQL stores (faults: tests/test_faults.py)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.helpers import assert_exact_budget, create_study_cli, process_table, read_until, start_cli, trials_of
from tests.postgres import PASSWORD

pytestmark = pytest.mark.slow


# On SQLite here; on PostgreSQL, where the spec file holds the password, in
# tests/stores/test_no_secrets.py (one launch checks both promises there).
@pytest.mark.parametrize("stores", ["sqlite"], indirect=True)
def test_three_workers_finish_exactly_the_budget(cli, cli_fast, tmp_path, digits_checkpoint, stores):
    create_study_cli(cli_fast, tmp_path, digits_checkpoint, stores, "shared", 12)
    result = cli(
        "study", "run", "shared", "--workers", "3",
        "--oversubscribe",  # pinned test processes may have fewer cores
        "--storage", stores.storage, "--tracking-uri", stores.tracking, "--no-progress",
        # a long grace: on an overloaded machine a live worker's heartbeat can be late, and a retried trial
        # is not what this test is about (test_sigkill_of_a_worker_costs_one_trial_which_is_retried is)
        "--grace", "120",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert_exact_budget(stores, "shared", 12, workers=3, stderr=result.stderr)


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        (f"postgresql://someone:{PASSWORD}@127.0.0.1:9/optuna", "cannot open the Optuna storage"),
        ("sqlite:////proc/nowhere/optuna.db", "cannot open the SQLite database /proc/nowhere/optuna.db"),
        ("mongodb://127.0.0.1/optuna", "unsupported database"),
    ],
    ids=["postgresql-nobody-listens", "sqlite-unwritable-directory", "unsupported-scheme"],  # no password in ids
)
def test_unreachable_storage_at_start_is_one_line(cli_fast, storage, message):
    for command in (("study", "run", "any"), ("study", "list"), ("db", "init")):
        result = cli_fast(*command, "--storage", storage)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.stderr
        assert PASSWORD not in result.stderr + result.stdout


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
    create_study_cli(cli_fast, tmp_path, digits_checkpoint, stores, "many", 3)
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
    create_study_cli(cli_fast, tmp_path, digits_checkpoint, stores, "early", 6)
    workers = available_cores() + 1
    proc = start_cli(tmp_path, "study", "run", "early", "--workers", str(workers), "--oversubscribe", "--no-progress")
    lines: list[str] = []
    started: set[int] = set()
    try:
        read_until(proc, re.escape(f"{workers} worker(s)"), lines, timeout=300)
        deadline = time.monotonic() + 60
        while len(started) < workers and time.monotonic() < deadline:  # all started, none loaded yet
            started = {
                pid
                for pid, (parent, _, _) in process_table().items()
                if parent == proc.pid and b"ct_tune.search.worker" in _cmdline(pid)
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


def _cmdline(pid: int) -> bytes:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    return b""
