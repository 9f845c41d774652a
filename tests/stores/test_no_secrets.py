"""A password written in the spec file is used to log in and written nowhere.

A study on the password-protected (scram) PostgreSQL of tests/postgres.py, both URLs with their password
in the spec's ``storage:`` and ``tracking_uri:``, is created, run by three workers and reported; then every
table of both databases, every file of the run directory (artifacts, ``spec.json``, worker logs) and
everything printed are searched for the password. Later commands find the password where the rule of
ct_tune/stores/_urls.py says (the spec file, the flag, PGPASSWORD), never in what the study recorded.
The same launch is the PostgreSQL case of "three workers finish exactly the budget" (SQLite's is in
tests/workers/test_workers_cli.py): one MLflow run per trial, nothing left RUNNING.
"""

from __future__ import annotations

from ct_tune import InputError, load_study

import pytest
import sqlalchemy

from tests.conftest import Stores, write_spec
from tests.helpers import assert_exact_budget
from tests.postgres import PASSWORD

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def dump_database(url: str) -> str:
    """Every row of every table, as text."""
    engine = sqlalchemy.create_engine(url)
    try:
        tables = sqlalchemy.inspect(engine).get_table_names()
        with engine.connect() as connection:
            rows = {table: connection.execute(sqlalchemy.text(f'SELECT * FROM "{table}"')).all() for table in tables}
        return "\n".join(f"{table}: {found!r}" for table, found in rows.items())
    finally:
        engine.dispose()


def test_three_workers_finish_exactly_the_budget_and_the_password_of_the_spec_is_written_nowhere(
    cli, tmp_path, digits_checkpoint, postgres, monkeypatch, capfd
):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))  # only what the test gives
    storage, tracking = (postgres.url(postgres.create_database(name)) for name in ("optuna", "mlflow"))
    spec = write_spec(
        tmp_path / "secret.yaml",
        digits_checkpoint,
        name="secret",
        budget={"n_trials": 12},
        storage=storage.replace("+psycopg", ""),  # as a user writes it
        tracking_uri=tracking.replace("+psycopg", ""),
    )
    assert PASSWORD in spec.read_text()  # the one place it may be: the user's own file

    created = cli("study", "create", spec.name)
    assert created.returncode == 0, created.stderr
    assert "next: ct-tune study run secret.yaml" in created.stdout  # the spec file names both stores
    # the spec's tracking_uri, not the record's; a long grace: on an overloaded machine a live worker's heartbeat
    # can be late, and a retried trial is not what this test is about (tests/test_faults.py's killed worker is)
    run = cli("study", "run", spec.name, "--workers", "3", "--oversubscribe", "--no-progress", "--grace", "120")
    assert run.returncode == 0, run.stderr
    assert run.stderr.count(" ready on ") == 3 and "budget reached" in run.stdout
    assert_exact_budget(Stores("postgres", storage, tracking), "secret", 12, workers=3, stderr=run.stderr)

    # The study recorded its MLflow store without the password: without one from the flag or PGPASSWORD,
    # one line says where to put it (an earlier ct-tune tried to log in with '***' for 100 s).
    refused = cli("study", "report", "secret", "--storage", storage)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ct-tune: error: cannot open the MLflow tracking store "), lines
    assert "~/.pgpass or PGPASSWORD" in lines[0] and "ctune@127.0.0.1" in lines[0]
    # The Python API, with the password where libpq looks for it
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    study = load_study("secret", storage=postgres.url(storage.rsplit("/", 1)[1], password=False))
    report = study.report(device="cpu")
    assert report.trials and all(row.test for row in report.trials)
    monkeypatch.delenv("PGPASSWORD")
    with pytest.raises(InputError, match=r"~/\.pgpass or PGPASSWORD"):
        load_study("secret", storage=storage).report(device="cpu")
    console = "\n".join(r.stdout + r.stderr for r in (created, run, refused)) + "".join(capfd.readouterr())

    databases = {name: dump_database(url) for name, url in (("optuna", storage), ("mlflow", tracking))}
    assert "trial_params" in databases["optuna"] and "runs:" in databases["mlflow"]
    assert "ctune@127.0.0.1" in databases["optuna"] + databases["mlflow"]  # the URLs are there, without password
    files = [path for path in tmp_path.rglob("*") if path.is_file() and path != spec]
    names = {path.name for path in files}
    assert {"spec.json", "report.json", "worker-0.log", "worker-1.log", "worker-2.log"} <= names, sorted(names)

    found = [name for name, text in databases.items() if PASSWORD in text]
    found += [str(path.relative_to(tmp_path)) for path in files if PASSWORD.encode() in path.read_bytes()]
    found += ["console"] if PASSWORD in console else []
    assert not found, f"the password is in {found}"
