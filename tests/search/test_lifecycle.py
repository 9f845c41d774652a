"""A study's life against other commands at once, on real processes and stores: two ``study create`` of
one name, ``study delete`` while a launch runs, and a plain Optuna study where a ct-tune one was expected."""

from __future__ import annotations

import subprocess
import sys

import pytest
from mlflow import MlflowClient

from tests.conftest import SOURCE_ROOT, Stores, write_spec
from tests.helpers import spawn

pytestmark = pytest.mark.slow

# ``ct-tune ARGS`` held twice: once both are about to create the study (so they start together), and for up
# to 5 s right after the MLflow experiment lookup (where, without a lock per name, both saw no experiment
# and the loser's clean-up deleted the winner's). With the lock the second waits on it, not at the barrier.
RACER = """
import sys, time
from pathlib import Path
from ct_tune.search import _study
from ct_tune.tracking import Tracker

barrier, me, other = Path(sys.argv[1]), sys.argv[2], sys.argv[3]

def meet(point, seconds):
    (barrier / f"{point}-{me}").touch()
    deadline = time.monotonic() + seconds
    while not (barrier / f"{point}-{other}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)

new_study, lookup = _study.new_study, Tracker.experiment_id

def held_new_study(*args, **kwargs):
    meet("start", 600)
    return new_study(*args, **kwargs)

def held_lookup(self, name, *, create):
    found = lookup(self, name, create=create)
    if not create:
        meet("looked", 5)
    return found

_study.new_study, Tracker.experiment_id = held_new_study, held_lookup
from ct_tune.cli import main
sys.exit(main(sys.argv[4:]))
"""


def test_two_creates_of_one_name_at_once_make_one_study(cli, tmp_path, digits_checkpoint, stores: Stores):
    write_spec(tmp_path / "race.yaml", digits_checkpoint, name="race", budget={"n_trials": 1})
    options = ["--storage", stores.storage, "--tracking-uri", stores.tracking]
    env = {"PYTHONPATH": str(SOURCE_ROOT), "MLFLOW_DISABLE_TELEMETRY": "true", "PATH": "/usr/bin:/bin"}
    racers = [
        spawn(
            [sys.executable, "-c", RACER, str(tmp_path), me, other, "study", "create", "race.yaml", *options],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me, other in (("a", "b"), ("b", "a"))
    ]
    results = [(proc, *proc.communicate(timeout=600)) for proc in racers]
    codes = sorted(proc.returncode for proc, _, _ in results)
    assert codes == [0, 2], [(proc.returncode, err) for proc, _, err in results]
    loser = next(err for proc, _, err in results if proc.returncode == 2)
    assert len(loser.strip().splitlines()) == 1 and "a study named 'race' already exists" in loser, loser
    assert "Traceback" not in loser

    client = MlflowClient(stores.tracking)
    experiment = client.get_experiment_by_name("ct-tune/race")
    assert experiment is not None and experiment.lifecycle_stage == "active"
    run = cli("study", "run", "race", *options, "--no-progress")
    assert run.returncode == 0, run.stderr  # the winner's study runs on its experiment
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2 and not [r for r in runs if r.info.status == "RUNNING"]  # its parent and one trial


@pytest.mark.parametrize("kind", ["plain", "half-created"])
def test_a_study_ct_tune_did_not_finish_creating_can_be_deleted_then_created(
    cli_fast, tmp_path, digits_checkpoint, kind
):
    from ct_tune.tracking.keys import ATTR_SPEC

    import optuna

    write_spec(tmp_path / "spec.yaml", digits_checkpoint, name="taken")
    (tmp_path / "studies").mkdir()
    other = optuna.create_study(study_name="taken", storage=f"sqlite:///{tmp_path}/studies/optuna.db")
    other.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    if kind == "half-created":  # a create stopped (SIGKILL) after the spec, before the units and MLflow record
        other.set_user_attr(ATTR_SPEC, {"name": "taken"})

    for args in (("study", "create", "spec.yaml"), ("study", "status", "taken"), ("study", "run", "taken")):
        refused = cli_fast(*args)
        assert refused.returncode == 2, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "is not a complete ct-tune study" in refused.stderr, refused.stderr
        assert "delete it with 'ct-tune study delete taken'" in refused.stderr, refused.stderr
        assert "ct-tune study create'" not in refused.stderr  # no advice that leads back here

    unconfirmed = cli_fast("study", "delete", "taken")
    assert unconfirmed.returncode == 2 and "not a complete ct-tune study" in unconfirmed.stderr
    assert "needs confirmation: add --yes" in unconfirmed.stderr
    deleted = cli_fast("study", "delete", "taken", "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert "deleted study 'taken' (not a complete ct-tune study" in deleted.stdout and "(2 trials)" in deleted.stdout
    created = cli_fast("study", "create", "spec.yaml")
    assert created.returncode == 0, created.stderr
    assert cli_fast("study", "status", "taken").returncode == 0


@pytest.mark.parametrize("stores", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_delete_refuses_a_live_launch_and_force_stops_it_cleanly(cli_fast, tmp_path, digits_checkpoint, stores):
    from mlflow.entities import ViewType

    from tests.helpers import SLOW_OBJECTIVES, create_study_cli, read_until, start_launch, wait_until_inside_a_trial

    options = create_study_cli(cli_fast, tmp_path, digits_checkpoint, stores, "live", 40, objectives=SLOW_OBJECTIVES)
    experiment_id = MlflowClient(stores.tracking).get_experiment_by_name("ct-tune/live").experiment_id
    proc = start_launch(tmp_path, "study", "run", "live", *options, "--workers", "2", "--heartbeat", "1")
    seen: list[str] = []
    for _ in range(2):
        read_until(proc, r"worker \d ready", seen, timeout=300)
    wait_until_inside_a_trial(stores, "live", worker=0)

    refused = cli_fast("study", "delete", "live", *options, "--yes")
    assert refused.returncode == 2, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert (
        "study 'live' is running: " in refused.stderr and "RUNNING trial(s), the freshest heartbeat" in refused.stderr
    )
    assert "stop its launch first (Ctrl-C), or pass --force" in refused.stderr
    assert proc.poll() is None  # nothing was deleted: the launch goes on

    forced = cli_fast("study", "delete", "live", *options, "--yes", "--force")
    assert forced.returncode == 0, forced.stderr
    _, rest = proc.communicate(timeout=300)
    stderr = "".join(seen) + rest
    assert proc.returncode == 4, stderr
    assert "Traceback" not in stderr and "Record does not exist" not in stderr, stderr
    assert "study 'live' was deleted while it ran" in stderr.strip().splitlines()[-1], stderr
    logs = "".join(path.read_text() for path in (tmp_path / "logs" / "live").glob("*.log"))
    assert "Traceback" not in logs, logs

    client = MlflowClient(stores.tracking)
    assert client.get_experiment(experiment_id).lifecycle_stage == "deleted"
    runs = client.search_runs([experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    assert len(runs) > 1 and not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
