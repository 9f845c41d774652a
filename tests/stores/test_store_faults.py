"""Stores that fail for good, on real files and processes (issue 23, items 8-10): a read-only store is
refused before a launch, naming the store; a damaged or read-only Optuna storage mid-run is not reported as
an outage to wait out, and the MLflow runs are closed on the way out; a schema half-created by a full disk
does not brick the store."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import SOURCE_ROOT, Stores, write_spec
from tests.helpers import create_study_cli

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` refuses writes while the block runs. Root ignores file modes, so as root the file is made
    immutable (``chattr +i``); the test is skipped where neither takes."""
    immutable = os.geteuid() == 0
    if immutable:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode != 0:
            pytest.skip("running as root and chattr +i does not work here: no way to make a file read-only")
    else:
        path.chmod(0o444)
    try:
        try:
            with path.open("r+b"):
                pytest.skip(f"{path} still takes writes")
        except OSError:
            pass
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        else:
            path.chmod(0o644)


def sqlite_stores(tmp_path: Path) -> Stores:
    return Stores("sqlite", f"sqlite:///{tmp_path}/studies/optuna.db", f"sqlite:///{tmp_path}/mlruns/mlflow.db")


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr and "sqlalchemy" not in stderr.lower(), stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ct-tune: error: "), stderr
    return lines[0]


# -- item 8: a store that reads but refuses writes is refused before a launch, and named -----------------------
@pytest.mark.parametrize("store", ["mlflow", "optuna"])
def test_a_read_only_store_is_refused_before_a_launch_naming_it(cli, cli_fast, tmp_path, digits_checkpoint, store):
    stores = sqlite_stores(tmp_path)
    options = create_study_cli(cli_fast, tmp_path, digits_checkpoint, stores, "ro", 2)
    file = tmp_path / ("mlruns/mlflow.db" if store == "mlflow" else "studies/optuna.db")
    named = "the MLflow tracking store" if store == "mlflow" else "the Optuna storage"
    with read_only(file):
        ran = cli("study", "run", "ro", *options, "--no-progress")
        # a fresh process, as a user runs it (in one process, SQLite shares the file MLflow opened before)
        (tmp_path / "again.yaml").write_text((tmp_path / "ro.yaml").read_text())
        created = cli("study", "create", "again.yaml", "--name", "again", *options)
    for result in (ran, created):
        assert result.returncode == 2, result.stderr
        line = one_error_line(result.stderr)
        assert f"cannot write to {named} sqlite:///{file}" in line, line
        assert "attempt to write a readonly database" in line and "writable" in line, line
        assert "stopped answering" not in line
    client = MlflowClient(stores.tracking)
    runs = client.search_runs([client.get_experiment_by_name("ct-tune/ro").experiment_id])
    assert [(run.info.run_name, run.info.status) for run in runs] == [("study-ro", "SCHEDULED")]  # nothing ran
    assert client.get_experiment_by_name("ct-tune/again") is None


# -- item 9: a fault that waiting does not mend is not an outage; MLflow's runs are closed ---------------------
def corrupt_table(database: Path, table: str) -> None:
    """Overwrite the root page of ``table`` in ``database`` with garbage (a bad sector, a torn write)."""
    with sqlite3.connect(database) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the main file
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        root = connection.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    with database.open("r+b") as file:
        file.seek((root - 1) * page_size)
        file.write(b"\xa5" * page_size)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_damaged_optuna_storage_is_not_an_outage_and_mlflow_runs_are_closed(
    cli, cli_fast, tmp_path, digits_checkpoint, workers
):
    stores = sqlite_stores(tmp_path)
    options = create_study_cli(cli_fast, tmp_path, digits_checkpoint, stores, "torn", 2)
    corrupt_table(tmp_path / "studies/optuna.db", "trial_values")  # the first tell of a value fails
    result = cli("study", "run", "torn", *options, "--workers", str(workers), "--oversubscribe", "--no-progress")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    if workers > 1:  # the launcher relays the worker's line
        assert last.startswith("ct-tune: error: worker ") and ": the Optuna storage sqlite:///" in last, last
    else:
        assert last.startswith("ct-tune: error: the Optuna storage sqlite:///"), last
    assert "is damaged (database disk image is malformed)" in last and "restore it from a backup" in last, last
    assert "once it is back" not in result.stderr and "stopped answering" not in result.stderr
    client = MlflowClient(stores.tracking)
    runs = client.search_runs([client.get_experiment_by_name("ct-tune/torn").experiment_id])
    statuses = {run.info.run_name: run.info.status for run in runs}
    assert statuses.pop("study-torn") == "FAILED" and statuses.pop("trial-0000") == "FAILED", statuses
    assert set(statuses.values()) <= {"FAILED"}, statuses  # a second worker's trial, when it opened one


def sqlite_error(database: Path, statement: str, *, mode: str = "rw") -> BaseException:
    """The SQLAlchemy error a real SQLite file gives for ``statement``."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"sqlite:///file:{database}?mode={mode}&uri=true")
    try:
        with engine.connect() as connection, connection.begin():
            connection.exec_driver_sql(statement)
    except sqlalchemy.exc.DBAPIError as error:
        return error
    finally:
        engine.dispose()
    raise AssertionError(f"{statement} did not fail")


def test_permanent_database_faults_are_told_from_a_server_that_went_away(tmp_path, postgres_or_none):
    from ct_tune.stores import database_fault

    database = tmp_path / "a.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE t (x)")
    read_only_error = sqlite_error(database, "INSERT INTO t VALUES (1)", mode="ro")
    assert database_fault(read_only_error)[0] == "refuses writes"
    damaged = tmp_path / "b.db"
    damaged.write_bytes(b"not a database at all" * 300)
    assert database_fault(sqlite_error(damaged, "SELECT * FROM t"))[0] == "is damaged"
    gone = refused_connection_error()
    assert database_fault(gone) is None  # an outage: run again once it is back
    if postgres_or_none is not None:
        assert database_fault(postgres_read_only_error(postgres_or_none)) is not None


def refused_connection_error() -> BaseException:
    import sqlalchemy

    engine = sqlalchemy.create_engine("postgresql+psycopg://ctune@127.0.0.1:9/x", connect_args={"connect_timeout": 5})
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.DBAPIError as error:
        return error
    finally:
        engine.dispose()
    raise AssertionError("port 9 answered")


def postgres_read_only_error(server) -> BaseException:
    """A server that takes no writes (a hot standby, a read-only role): SQLSTATE 25006."""
    import sqlalchemy

    url = server.url(server.create_database("locked"))
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (x int)")
    engine.dispose()
    engine = sqlalchemy.create_engine(url, connect_args={"options": "-c default_transaction_read_only=on"})
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("INSERT INTO t VALUES (1)")
    except sqlalchemy.exc.DBAPIError as error:
        return error
    finally:
        engine.dispose()
    raise AssertionError("a read-only transaction took a write")


@pytest.fixture
def postgres_or_none(request: pytest.FixtureRequest):
    try:
        return request.getfixturevalue("postgres")
    except pytest.skip.Exception:
        return None


# -- item 10: a first MLflow schema creation stopped by a full disk does not brick the store -------------------
FIRST_USE_ON_A_FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (150000, 150000))  # the disk fills after 150 kB of a file
from ct_tune.stores import open_mlflow_client
open_mlflow_client(sys.argv[1])
"""


def tables_of(database: Path) -> set[str]:
    with sqlite3.connect(database) as connection:
        return {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_a_schema_half_created_on_a_full_disk_is_created_again(cli, tmp_path, digits_checkpoint):
    stores = sqlite_stores(tmp_path)
    database = tmp_path / "mlruns/mlflow.db"
    env = {**os.environ, "PYTHONPATH": str(SOURCE_ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    first = subprocess.run(
        [sys.executable, "-c", FIRST_USE_ON_A_FULL_DISK, stores.tracking],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode != 0 and "cannot open the MLflow tracking store" in first.stderr, first.stderr
    assert any(t.startswith("_alembic_tmp_") for t in tables_of(database))  # stopped inside a migration
    upgraded = cli("db", "upgrade", "--storage", stores.storage, "--tracking-uri", stores.tracking)
    assert upgraded.returncode == 0, upgraded.stderr
    said = upgraded.stdout + upgraded.stderr
    assert "created again (it was half-created: a migration's leftover table _alembic_tmp_" in said, said
    assert "it held no data)" in said and "Traceback" not in said
    assert not any(t.startswith("_alembic_tmp_") for t in tables_of(database))
    write_spec(tmp_path / "s.yaml", digits_checkpoint, name="s", budget={"n_trials": 1})
    options = ["--storage", stores.storage, "--tracking-uri", stores.tracking]
    assert cli("db", "init", *options).returncode == 0
    created = cli("study", "create", "s.yaml", *options)
    assert created.returncode == 0, created.stderr


def test_a_half_created_store_that_holds_runs_is_left_alone(tmp_path):
    """Only a store that provably holds no data is created again: one with a run gets one line instead."""
    from ct_tune import InputError
    from ct_tune.stores import open_mlflow_client

    url = f"sqlite:///{tmp_path}/mlflow.db"
    client = open_mlflow_client(url)
    run = client.create_run(client.create_experiment("kept"))
    with sqlite3.connect(tmp_path / "mlflow.db") as connection:
        connection.execute("CREATE TABLE _alembic_tmp_runs (x INTEGER)")  # a migration stopped midway
    with pytest.raises(InputError, match=r"half-migrated schema \(a migration's leftover table _alembic_tmp_runs\) "):
        open_mlflow_client(url)
    with sqlite3.connect(tmp_path / "mlflow.db") as connection:
        assert connection.execute("SELECT run_uuid FROM runs").fetchall() == [(run.info.run_id,)]
