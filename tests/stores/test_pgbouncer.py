"""The Optuna storage behind PgBouncer in transaction mode (docs/postgres_scale.md, the step past an MLflow
tracking server): several processes open it at once and run trials, none waits forever, none fails.

Two things broke there before: the schema lock was a session advisory lock, which stays on PgBouncer's
server connection after the client has gone (three of four concurrent openers hung), and psycopg's
server-side prepared statements, which the next transaction may not find on its server connection
(``prepared statement "_pg3_6" does not exist``). PgBouncer is not a dependency: without it this test is
skipped (CI installs PostgreSQL only); ``apt-get install pgbouncer`` gives it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import optuna
import pytest

from tests.conftest import SOURCE_ROOT
from tests.helpers import spawn
from tests.postgres import PASSWORD, USER, _free_port

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(shutil.which("pgbouncer") is None, reason="PgBouncer is not installed"),
]

PROCESSES = 4
TRIALS = 12  # more than psycopg's threshold (5 runs of a query) for a prepared statement

WORKER = textwrap.dedent(
    """
    import sys

    import ct_tune
    from ct_tune.stores import open_optuna_storage

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = sys.stdin.readline().strip()  # it holds the password: not in argv
    storage = open_optuna_storage(url, heartbeat_interval=5, grace_period=60)
    study = optuna.load_study(study_name="bounced", storage=storage)
    for _ in range(int(sys.argv[1])):
        trial = study.ask()
        storage.record_heartbeat(trial._trial_id)
        study.tell(trial, trial.suggest_float("x", 0.0, 1.0))
    print("done", flush=True)
    """
)


@pytest.fixture
def pgbouncer(postgres):
    """PgBouncer in transaction mode on loopback in front of the test server; yields its port."""
    root = Path(tempfile.mkdtemp(prefix="ct-tune-pgbouncer-"))  # the server's user must read it
    root.chmod(0o755)
    port = _free_port()
    (root / "userlist.txt").write_text(f'"{USER}" "{PASSWORD}"\n')
    (root / "pgbouncer.ini").write_text(
        textwrap.dedent(
            f"""
            [databases]
            * = host=127.0.0.1 port={postgres.port}
            [pgbouncer]
            listen_addr = 127.0.0.1
            listen_port = {port}
            unix_socket_dir =
            auth_type = scram-sha-256
            auth_file = {root}/userlist.txt
            pool_mode = transaction
            default_pool_size = 3
            max_client_conn = 100
            """
        )
    )
    user: dict = {}
    if postgres.run_as:  # PgBouncer refuses to run as root, as PostgreSQL does
        entry = pwd.getpwnam(postgres.run_as)
        for path in (root, root / "userlist.txt", root / "pgbouncer.ini"):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        # the process itself changes user (not runuser, whose child a kill would leave running)
        user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    log = (root / "pgbouncer.log").open("w")
    proc = spawn(["pgbouncer", str(root / "pgbouncer.ini")], stdout=log, stderr=subprocess.STDOUT, **user)
    log.close()
    deadline = time.monotonic() + 30
    while "listening on" not in (root / "pgbouncer.log").read_text():
        assert proc.poll() is None and time.monotonic() < deadline, (root / "pgbouncer.log").read_text()
        time.sleep(0.1)
    yield port
    proc.kill()
    proc.wait(timeout=30)
    shutil.rmtree(root, ignore_errors=True)


def test_concurrent_workers_open_the_storage_and_run_trials_through_pgbouncer(postgres, pgbouncer):
    database = postgres.create_database("optuna")
    optuna.create_study(study_name="bounced", storage=postgres.url(database))  # once, as ct-tune does
    url = postgres.url(database).replace(f":{postgres.port}/", f":{pgbouncer}/")
    env = {"PYTHONPATH": str(SOURCE_ROOT), "MLFLOW_DISABLE_TELEMETRY": "true", "PATH": "/usr/bin:/bin"}
    procs = [
        spawn(
            [sys.executable, "-c", WORKER, str(TRIALS)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    for proc in procs:
        proc.stdin.write(url + "\n")
        proc.stdin.flush()
    deadline = time.monotonic() + 180
    for proc in procs:
        try:
            output, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail("a process opening the storage through PgBouncer did not finish within 180 s (a lock?)")
        assert proc.returncode == 0 and "done" in output, output
        assert PASSWORD not in output
    trials = optuna.load_study(study_name="bounced", storage=postgres.url(database)).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * (PROCESSES * TRIALS)
