"""Creating and upgrading both schemas: idempotent, two databases or none, safe when processes race."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ct_tune import InputError
from ct_tune.stores import STORAGE_ENV, TRACKING_ENV, init_stores, open_optuna_storage, upgrade_stores

import optuna
import pytest
from mlflow import MlflowClient

from tests.conftest import SOURCE_ROOT, write_spec
from tests.postgres import PASSWORD


@pytest.mark.slow
def test_init_stores_is_idempotent(stores):
    first = init_stores(storage=stores.storage, tracking_uri=stores.tracking)
    head = open_optuna_storage(stores.storage).get_head_version()
    assert first == {
        "storage": first["storage"],
        "optuna_schema": head,
        "tracking_uri": first["tracking_uri"],
        "mlflow_ready": True,
    }
    assert PASSWORD not in str(first)
    if stores.backend == "postgres":
        assert ":***@" in first["storage"] and ":***@" in first["tracking_uri"]
    # something in both stores, then init again: nothing is recreated or lost
    optuna.create_study(storage=stores.storage, study_name="kept")
    MlflowClient(stores.tracking).create_experiment("kept")
    assert init_stores(storage=stores.storage, tracking_uri=stores.tracking) == first
    assert [s.study_name for s in optuna.get_all_study_summaries(stores.storage, include_best_trial=False)] == ["kept"]
    assert MlflowClient(stores.tracking).get_experiment_by_name("kept") is not None


def test_init_stores_refuses_one_database_for_both(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    same = f"sqlite:///{tmp_path}/both.db"
    for storage, tracking in ((same, same), ("sqlite:///both.db", same), (same, "sqlite:///./both.db")):
        with pytest.raises(InputError, match="are one database"):
            init_stores(storage=storage, tracking_uri=tracking)
        with pytest.raises(InputError, match="are one database"):
            upgrade_stores(storage=storage, tracking_uri=tracking)
    assert not (tmp_path / "both.db").exists()  # refused before either store was touched
    monkeypatch.setenv(STORAGE_ENV, same)
    monkeypatch.setenv(TRACKING_ENV, same)
    with pytest.raises(InputError, match="are one database"):
        init_stores()


@pytest.mark.postgres
def test_init_stores_refuses_one_postgresql_database_for_both(postgres):
    url = postgres.url(postgres.create_database("both"))
    with pytest.raises(InputError, match="are one database"):
        init_stores(storage=url, tracking_uri=url.replace("+psycopg", ""))  # two spellings, one database


def test_init_stores_refuses_one_sqlite_file_named_two_ways(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(InputError, match="are one database"):
        init_stores(storage=f"sqlite:///{tmp_path}/x/../x/both.db", tracking_uri=f"sqlite:///{tmp_path}/x/both.db")


def test_init_stores_leaves_a_tracking_server_alone(tmp_path):
    result = init_stores(storage=f"sqlite:///{tmp_path}/optuna.db", tracking_uri=f"http://u:{PASSWORD}@127.0.0.1:9")
    assert result["mlflow_ready"] is False and result["tracking_uri"] == "http://u:***@127.0.0.1:9"
    assert (tmp_path / "optuna.db").is_file()


@pytest.mark.slow
def test_upgrade_stores_on_sqlite(tmp_path):
    storage, tracking = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    result = upgrade_stores(storage=storage, tracking_uri=tracking)  # empty stores: created at the head
    head = open_optuna_storage(storage).get_head_version()
    assert result == {
        "storage": storage,
        "optuna_schema": {"before": head, "after": head},
        "tracking_uri": tracking,
        "mlflow": "upgraded",
    }
    MlflowClient(tracking).create_experiment("after-upgrade")  # a usable MLflow store


def test_upgrade_stores_errors_are_one_line(tmp_path):
    garbage = tmp_path / "optuna.db"
    garbage.write_text("not a database " * 200)
    with pytest.raises(InputError) as error:
        upgrade_stores(storage=f"sqlite:///{garbage}", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert "\n" not in str(error.value) and "file is not a database" in str(error.value)
    server = upgrade_stores(storage=f"sqlite:///{tmp_path}/ok.db", tracking_uri="http://127.0.0.1:9")
    assert server["mlflow"] == "a tracking server (upgrade it there)"


@pytest.mark.slow
def test_concurrent_study_create_on_empty_stores(stores, tmp_path, digits_checkpoint):
    """Three ``study create`` started at once on two empty databases: the first creates both schemas, the
    others wait for it (before the schema lock, all three failed on SQLite with migration errors)."""
    env = {**os.environ, "PYTHONPATH": str(SOURCE_ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    names = ["race0", "race1", "race2"]
    for name in names:
        write_spec(tmp_path / f"{name}.yaml", digits_checkpoint, name=name)
    stores_args = ["--storage", stores.storage, "--tracking-uri", stores.tracking]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "ct_tune.cli", "study", "create", f"{name}.yaml", *stores_args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    errors = [process.communicate(timeout=600)[1] for process in processes]
    for process, stderr in zip(processes, errors, strict=True):
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr and "error" not in stderr, stderr
    created = optuna.get_all_study_summaries(stores.storage, include_best_trial=False)
    assert sorted(s.study_name for s in created) == names
    experiments = MlflowClient(stores.tracking).search_experiments()
    assert sorted(e.name for e in experiments if e.name.startswith("ct-tune/")) == [f"ct-tune/{n}" for n in names]


@pytest.mark.postgres
def test_upgrade_keeps_the_password_off_every_command_line(tmp_path, postgres):
    """Every process upgrade_stores starts is seen by an audit hook: no command line holds the password."""
    storage, tracking = postgres.url(postgres.create_database("up_o")), postgres.url(postgres.create_database("up_m"))
    script = (
        "import sys, json\n"
        "seen = []\n"
        "sys.addaudithook(lambda event, args: seen.append(repr(args[1])) if event == 'subprocess.Popen' else None)\n"
        "from ct_tune.stores import upgrade_stores\n"
        f"result = upgrade_stores(storage={storage!r}, tracking_uri={tracking!r})\n"
        "print(json.dumps({'commands': seen, 'mlflow': result['mlflow']}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["mlflow"] == "upgraded" and report["commands"]  # MLflow's upgrade ran in a process of its own
    assert not [command for command in report["commands"] if PASSWORD in command]
