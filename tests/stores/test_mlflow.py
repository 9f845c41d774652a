"""Opening the MLflow backend store: the schema created on first use, a store that cannot be opened one line."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import textwrap
import time

from ct_tune import InputError
from ct_tune.stores import open_mlflow_client

import pytest
from sqlalchemy import create_engine, inspect

from tests.conftest import SOURCE_ROOT
from tests.postgres import PASSWORD


@pytest.mark.slow
def test_open_creates_the_schema(stores):
    import mlflow  # noqa: F401  (importing MLflow configures these loggers: measure after it, as a caller would)

    before = {name: logging.getLogger(name).level for name in ("alembic", "mlflow.store.db.utils")}
    client = open_mlflow_client(stores.tracking)
    tables = set(inspect(create_engine(stores.tracking)).get_table_names())
    assert {"alembic_version", "experiments", "runs", "metrics", "params", "tags"} <= tables
    assert [e.name for e in client.search_experiments()] == ["Default"]
    experiment = client.create_experiment("opened")
    assert open_mlflow_client(stores.tracking).get_experiment(experiment).name == "opened"  # again: the same store
    assert {name: logging.getLogger(name).level for name in before} == before  # quietened only while opening


def test_unusable_sqlite_stores_are_one_line(tmp_path):
    garbage = tmp_path / "mlflow.db"
    garbage.write_text("not a database " * 200)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for url, message in (
        (f"sqlite:///{garbage}", "file is not a database"),
        (f"sqlite:///{blocker}/mlflow.db", f"cannot open the SQLite database {blocker}/mlflow.db"),
    ):
        with pytest.raises(InputError) as error:
            open_mlflow_client(url)
        assert "\n" not in str(error.value) and message in str(error.value)


def test_a_store_of_another_schema_is_one_line(tmp_path):
    """An Optuna database given as the MLflow store (both keep an alembic_version table)."""
    from ct_tune.stores import open_optuna_storage

    url = f"sqlite:///{tmp_path}/optuna.db"
    open_optuna_storage(url)
    with pytest.raises(InputError) as error:
        open_mlflow_client(url)
    text = str(error.value)
    assert "\n" not in text and text.startswith(f"cannot open the MLflow tracking store {url}: ")
    with sqlite3.connect(tmp_path / "optuna.db") as connection:  # and it left the Optuna schema alone
        assert "studies" in {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}


@pytest.mark.slow
def test_an_unreachable_store_is_one_line_and_quick():
    url = f"postgresql+psycopg://ctune:{PASSWORD}@127.0.0.1:9/mlflow"
    code = textwrap.dedent(
        f"""
        from ct_tune import InputError
        from ct_tune.stores import open_mlflow_client
        try:
            open_mlflow_client({url!r})
        except InputError as error:
            print(error)
        """
    )
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,  # importing MLflow takes a few seconds (more on a loaded machine); its own retries ~100 s
            env={"PYTHONPATH": str(SOURCE_ROOT), "MLFLOW_DISABLE_TELEMETRY": "true", "PATH": "/usr/bin:/bin"},
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"open_mlflow_client still retrying after {time.monotonic() - started:.0f} s")
    assert proc.stdout.startswith("cannot open the MLflow tracking store postgresql+psycopg://ctune:***@127.0.0.1:9")
    assert len(proc.stdout.strip().splitlines()) == 1 and "Connection refused" in proc.stdout
    assert "retried" not in proc.stderr and PASSWORD not in proc.stdout + proc.stderr
