"""Real workers of ``ct-tune study run`` on PostgreSQL each hold two connections while they score a trial:
one to the Optuna storage (shared by the heartbeat thread), one to the MLflow store.

A worker's connections are found by its process: the local ports of its sockets (``/proc``) are the
``client_port`` of its sessions in ``pg_stat_activity``. Before, a worker held five to six: the storage it
loaded the study with stayed open beside the one it ran trials on, and each pool kept what had once been
used at the same time. Each worker also names its connections ``ct-tune worker N`` (``application_name``),
so an operator's ``pg_stat_activity`` shows who holds what.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import Stores
from tests.helpers import (
    SLOW_OBJECTIVES,
    create_study_cli,
    descendants,
    process_table,
    start_launch,
    wait_until_inside_a_trial,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

SAMPLES = 5


def local_ports(pid: int) -> set[int]:
    """The local TCP ports (IPv4) of the sockets process ``pid`` has open."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] in inodes:
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def worker_pids(launcher: int) -> list[int]:
    found = []
    for pid in sorted(descendants(launcher, process_table())):
        with contextlib.suppress(OSError):
            if b"ct_tune.search.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


def held(admin_url: str, pid: int, databases: dict[str, str]) -> tuple[dict[str, int], set[str]]:
    """Connections process ``pid`` holds now by store ("optuna", "mlflow"), and their application names."""
    import psycopg

    ports = local_ports(pid)
    with psycopg.connect(admin_url, autocommit=True) as connection:
        rows = connection.execute("SELECT client_port, datname, application_name FROM pg_stat_activity").fetchall()
    counts, names = dict.fromkeys(databases.values(), 0), set()
    for port, database, name in rows:
        if port in ports and database in databases:
            counts[databases[database]] += 1
            names.add(name)
    return counts, names


def test_each_worker_holds_one_connection_per_store_while_it_scores(cli_fast, tmp_path, digits_checkpoint, postgres):
    stores = Stores("postgres", *(postgres.url(postgres.create_database(name)) for name in ("optuna", "mlflow")))
    options = create_study_cli(
        cli_fast, tmp_path, digits_checkpoint, stores, "lean", 4, objectives=SLOW_OBJECTIVES, pruner={"name": "none"}
    )
    launch = start_launch(tmp_path, "study", "run", "lean", *options, "--workers", "2", "--no-progress")
    databases = {stores.storage.rsplit("/", 1)[1]: "optuna", stores.tracking.rsplit("/", 1)[1]: "mlflow"}
    admin_url = postgres.url("postgres").replace("+psycopg", "")
    seen = {}
    for worker in (0, 1):
        wait_until_inside_a_trial(stores, "lean", worker=worker)
        pids = worker_pids(launch.pid)
        assert len(pids) == 2, pids
        # inside a slow trial's evaluation nothing but a heartbeat touches the stores: what is there is held
        for _ in range(SAMPLES):
            for pid in pids:
                seen.setdefault(pid, []).append(held(admin_url, pid, databases))
            time.sleep(0.2)
    try:
        _, stderr = launch.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("the launch did not end within 300 s")
    assert launch.returncode == 0, stderr
    for pid, samples in seen.items():
        for store in ("optuna", "mlflow"):
            assert statistics.median(counts[store] for counts, _ in samples) == 1, (pid, store, samples)
    names = set().union(*(found for samples in seen.values() for _, found in samples))
    assert names == {"ct-tune worker 0", "ct-tune worker 1"}
