"""Studies end to end through the CLI, on real digits, a real SQLite Optuna storage and a real MLflow store."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import ct_tune

import pytest

from tests._fresh import tiny_study
from tests.conftest import write_spec
from tests.helpers import listing, mlflow_runs, optuna_trials, plain_val_hits, run_betas

pytestmark = pytest.mark.slow

UNITS = ["stem", "layer1.0", "layer2.0", "layer3.0"]


def test_create_run_status_best_export_report_end_to_end(cli, tmp_path, digits_checkpoint):
    write_spec(tmp_path / "spec.yaml", digits_checkpoint, name="e2e")
    created = cli("study", "create", "spec.yaml", "--json")
    assert created.returncode == 0, created.stderr
    assert created.json()["units"] == UNITS
    assert created.json()["enqueued"] == 1  # the ReLU baseline

    run = cli("study", "run", "e2e", "--no-progress")
    assert run.returncode == 0, run.stderr
    assert "budget reached" in run.stdout
    assert run.stderr.count("COMPLETE") + run.stderr.count("PRUNED") == 6  # a live line per trial

    status = cli("study", "status", "e2e", "--json").json()
    assert status["trials"]["COMPLETE"] + status["trials"]["PRUNED"] == 6
    assert status["trials"]["RUNNING"] == 0 and status["trials"]["FAIL"] == 0
    assert status["baseline"]["betas"] == dict.fromkeys(UNITS, 1.0)

    best = cli("study", "best", "e2e", "--json").json()
    trial = best["trials"][0]
    assert set(trial["betas"]) == set(UNITS)
    assert 0.9 < trial["values"]["accuracy"] <= 1.0

    exported = cli("study", "export", "e2e", "--out", "best.json", "--json")
    assert exported.returncode == 0, exported.stderr
    profile = ct_tune.BetaProfile.load(tmp_path / "best.json")
    assert profile.betas == trial["betas"] and profile.granularity == "block"

    # The exported profile reproduces the trial's score through `ct-tune evaluate`.
    profile_args = ("--checkpoint", str(digits_checkpoint), "--data", "digits", "--profile", "best.json")
    evaluated = cli("evaluate", *profile_args, "--device", "cpu", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert evaluated.json()["results"]["accuracy"]["value"] == trial["values"]["accuracy"]

    # The baseline trial scores exactly the unsteered network (plain forwards here, at the spec's batch size).
    correct, total = plain_val_hits(digits_checkpoint, batch_size=128)
    assert status["baseline"]["values"]["accuracy"] == pytest.approx(correct / total, abs=1e-9)

    report = cli("study", "report", "e2e", "--json")
    assert report.returncode == 0, report.stderr
    rows = report.json()["trials"]
    assert {row["number"] for row in rows} == {trial["number"], status["baseline"]["number"]}
    assert all(0.8 < row["test"]["accuracy"] <= 1.0 for row in rows)

    # MLflow: one parent, one child per trial with the trial's params and values, linked both ways.
    parents, children = mlflow_runs(tmp_path, "e2e")
    assert len(parents) == 1
    assert len(children) == 6
    parent = parents[0].info  # spans the launch: ended after its last trial, not when it was created
    assert parent.status == "FINISHED" and parent.end_time >= max(run.info.end_time for run in children)
    trials = {t["number"]: t for t in optuna_trials(tmp_path, "e2e")}
    assert len(trials) == 6
    for run in children:
        number = int(run.data.tags["optuna.trial_number"])
        optuna_trial = trials[number]
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.tags["ct_tune.state"] == optuna_trial["state"]
        assert optuna_trial["user_attrs"]["mlflow_run_id"] == run.info.run_id
        assert run_betas(run) == {f"beta.{unit}": optuna_trial["params"][f"beta.{unit}"] for unit in UNITS}
        assert [k for k in run.data.params if k.startswith("beta.")] == sorted(
            f"beta.{i:02d}.{unit}" for i, unit in enumerate(UNITS)
        )  # MLflow sorts them by name: in network order
        if optuna_trial["state"] == "COMPLETE":
            assert run.data.metrics["accuracy"] == pytest.approx(optuna_trial["value"]["accuracy"])
    # optuna-dashboard (a standard tool) reads the same study through its web API.
    from wsgiref.util import setup_testing_defaults

    from optuna_dashboard import wsgi

    app = wsgi(f"sqlite:///{tmp_path}/studies/optuna.db")

    def get(path: str) -> dict:
        environ: dict = {}
        setup_testing_defaults(environ)
        environ["PATH_INFO"] = path
        status: list[str] = []
        body = b"".join(app(environ, lambda s, h, e=None: status.append(s)))
        assert status[0].startswith("200"), status
        return json.loads(body)

    summaries = get("/api/studies")["study_summaries"]
    assert [s["study_name"] for s in summaries] == ["e2e"]
    assert len(get(f"/api/studies/{summaries[0]['study_id']}")["trials"]) == 6
    assert parents[0].data.metrics["test.accuracy"] == pytest.approx(
        next(r for r in rows if r["number"] == trial["number"])["test"]["accuracy"]
    )


def test_existing_name_is_an_error_unless_resume_if_exists(cli_fast, tmp_path, digits_checkpoint):
    write_spec(tmp_path / "spec.yaml", digits_checkpoint, name="twice")
    assert cli_fast("study", "create", "spec.yaml").returncode == 0
    again = cli_fast("study", "create", "spec.yaml")
    assert again.returncode == 2
    assert "already exists" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    resumed = cli_fast("study", "create", "spec.yaml", "--resume-if-exists", "--json")
    assert resumed.returncode == 0 and resumed.json()["created"] is False
    changed = write_spec(tmp_path / "other.yaml", digits_checkpoint, name="twice", search={"granularity": "stage"})
    refused = cli_fast("study", "create", str(changed), "--resume-if-exists")
    assert refused.returncode == 2 and "another search space" in refused.stderr


def test_delete_removes_the_study_and_frees_its_name(cli_fast, tmp_path, digits_checkpoint):
    write_spec(tmp_path / "spec.yaml", digits_checkpoint, name="gone")
    assert cli_fast("study", "create", "spec.yaml").returncode == 0
    deleted = cli_fast("study", "delete", "gone", "--yes", "--json")
    assert deleted.returncode == 0, deleted.stderr
    assert cli_fast("study", "list", "--json").json()["studies"] == []
    assert cli_fast("study", "create", "spec.yaml").returncode == 0  # the name (and the experiment name) are free
    assert cli_fast("study", "delete", "gone").returncode == 2  # no terminal, no --yes: refused, nothing deleted


@pytest.fixture
def imagefolder(tmp_path: Path) -> Path:
    """A 3-class ImageFolder tree: a head mismatch for a 10-class digits checkpoint."""
    from PIL import Image

    for label in ("a", "b", "c"):
        folder = tmp_path / "folder" / label
        folder.mkdir(parents=True)
        for i in range(6):
            Image.new("L", (8, 8), color=i * 40).save(folder / f"{i}.png")
    return tmp_path / "folder"


BAD_SPECS = {
    "yaml": ("model: {checkpoint: x\n", "not valid YAML"),
    "unknown field": ({"modle": 1}, "unknown field 'modle'"),
    "beta range": ({"search": {"beta": {"low": 0.95, "high": 0.9}}}, "must be below high"),
    "objective": ({"objectives": ["robustness"]}, "expected one of 'accuracy', 'probe', 'adversarial'"),
    "sampler": ({"sampler": "tpee"}, "sampler.name: got 'tpee'"),
    "checkpoint": ({"model": {"checkpoint": "missing.pt"}}, "missing.pt not found"),
    "model name": ({"model": {"name": "resnet19"}}, "unknown model 'resnet19'"),
    "dataset": ({"data": {"name": "cifar11"}}, "unknown dataset 'cifar11'"),
    "head": ("imagefolder", "has a head for 10 classes"),
    "split": ({"data": {"name": "digits", "seed": 3}}, "another split"),
    "trials per batch": ({"run": {"trials_per_batch": 0}}, "run.trials_per_batch: got 0"),
    "batch and pruner": ({"run": {"trials_per_batch": 4}, "pruner": "median"}, "so none can be pruned midway"),
    "storage": ({"storage": "postgresql+psycopg://nobody@127.0.0.1:9/none"}, "cannot open the Optuna storage"),
    "storage port": ({"storage": "postgresql://nobody@127.0.0.1:abc/none"}, "has a port that is not a number"),
    "tracking port": ({"tracking_uri": "http://127.0.0.1:abc"}, "has a port that is not a number in 1-65535"),
    "device": ({"run": {"device": "tpu"}}, "run.device: got 'tpu'; use auto, cpu, cuda"),
    "key twice": ("model: {checkpoint: a.pt}\nmodel: {checkpoint: b.pt}\n", "key 'model' given twice"),
}


@pytest.mark.parametrize("kind", list(BAD_SPECS))
def test_bad_specs_are_one_line_exit_2_and_leave_no_study(cli_fast, tmp_path, digits_checkpoint, imagefolder, kind):
    change, message = BAD_SPECS[kind]
    path = tmp_path / "bad.yaml"
    if isinstance(change, str) and change != "imagefolder":
        path.write_text(change)
    elif change == "imagefolder":
        write_spec(path, digits_checkpoint, data={"name": "imagefolder", "data_dir": str(imagefolder)})
    else:
        write_spec(path, digits_checkpoint, **change)
    before = listing(tmp_path)
    result = cli_fast("study", "create", "bad.yaml")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr
    # nothing written: no store file (studies/optuna.db, mlruns/mlflow.db), no folder, no log
    assert listing(tmp_path) == before


def test_bad_output_paths_and_run_options_are_one_line_and_change_nothing(cli_fast, tmp_path, digits_checkpoint):
    study = tiny_study(tmp_path, digits_checkpoint, search={"granularity": "global", "enqueue_baseline": True})
    study.run(n_trials=1, progress=False)
    (tmp_path / "out").mkdir()
    (tmp_path / "plain").write_text("a file")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "mlruns" not in p.parts)
    cases = {
        ("study", "export", "tiny", "--out", "out"): "profile path out is a directory; give a file path, e.g. out/",
        ("study", "export", "tiny", "--out", "plain/p.json"): "cannot write profile plain/p.json (",
        ("study", "run", "tiny", "--heartbeat", "0"): "--heartbeat must be at least 1 second, not 0",
        ("study", "run", "tiny", "--workers", "2", "--log-dir", "plain/logs"): "cannot write the worker logs in plain",
    }
    for args, message in cases.items():
        result = cli_fast(*args)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, (args, result.stderr)
    after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "mlruns" not in p.parts)
    assert [p for p in after if p not in before and not p.startswith("studies/")] == []  # no .out.tmp, no logs
    assert cli_fast("study", "status", "tiny", "--json").json()["trials"]["COMPLETE"] == 1


def test_run_and_status_of_unknown_study_are_one_line(cli_fast, tmp_path):
    for command in (("study", "run", "nope"), ("study", "status", "nope"), ("study", "best", "nope")):
        result = cli_fast(*command)
        assert result.returncode == 2
        assert "no study named 'nope'" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../../tmp/evil", "--name (name=...) cannot be used: '../../tmp/evil' starts with '.'; use 1 to 100"),
        ("a/b", "--name (name=...) cannot be used: 'a/b' has other characters"),
        ("x" * 300, "--name (name=...) cannot be used: it has 300 characters"),
        ("", "--name (name=...) cannot be used: it is empty"),
        ("-x", "starts with '-'"),
    ],
)
def test_study_names_that_would_leave_their_folder_are_refused(cli_fast, tmp_path, digits_checkpoint, name, message):
    write_spec(tmp_path / "spec.yaml", digits_checkpoint)
    before = listing(tmp_path)
    result = cli_fast("study", "create", "spec.yaml", f"--name={name}")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and message in result.stderr
    assert listing(tmp_path) == before  # no store, no folder, no log


def test_a_spec_file_name_that_is_no_study_name_says_how_to_name_it(cli_fast, tmp_path, digits_checkpoint):
    write_spec(tmp_path / "my spec.yaml", digits_checkpoint)
    result = cli_fast("study", "create", "my spec.yaml")
    assert result.returncode == 2
    assert "the study name from the spec cannot be used: 'my spec' has other characters" in result.stderr
    assert "set name: in the spec or pass --name" in result.stderr


def test_the_next_hint_is_one_shell_word_per_argument(cli_fast, tmp_path, digits_checkpoint):
    folder = tmp_path / "it's here"
    folder.mkdir()
    write_spec(folder / "s.yaml", digits_checkpoint, name="quoted", storage=f"sqlite:///{folder}/optuna.db")
    result = cli_fast("study", "create", str(folder / "s.yaml"))
    assert result.returncode == 0, result.stderr
    hint = next(line for line in result.stdout.splitlines() if line.startswith("next: "))
    assert shlex.split(hint.removeprefix("next: ")) == ["ct-tune", "study", "run", str(folder / "s.yaml")]


@pytest.mark.slow
@pytest.mark.parametrize("after", [0.3, 1.0, 2.5, 4.0])
def test_ctrl_c_during_create_says_what_was_interrupted_and_leaves_nothing(tmp_path, digits_checkpoint, after):
    """SIGINT at any moment of `study create`: one line saying what was interrupted, exit 130, no traceback,
    and either no study in either store or the whole study (when it had finished)."""
    import optuna
    from mlflow import MlflowClient

    write_spec(tmp_path / "spec.yaml", digits_checkpoint, name="stopped")
    proc, err = interrupted_command(tmp_path, ["study", "create", "spec.yaml"], after=after, timeout=120)
    assert "Traceback" not in err, err
    storage = f"sqlite:///{tmp_path}/studies/optuna.db"
    names = optuna.get_all_study_names(storage) if (tmp_path / "studies/optuna.db").exists() else []
    experiments = []
    if (tmp_path / "mlruns/mlflow.db").exists():
        client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
        experiments = [e.name for e in client.search_experiments() if e.name.startswith("ct-tune/")]
    if proc.returncode == 0:  # it finished before the signal: the whole study
        assert names == ["stopped"] and experiments == ["ct-tune/stopped"]
        return
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("ct-tune: ") and "interrupted" in last, err
    assert names == [] and experiments == [], (last, names, experiments)


@pytest.mark.slow
@pytest.mark.parametrize("after", [1.0, 3.0, 5.0])
def test_ctrl_c_during_report_records_all_or_nothing(tmp_path, digits_checkpoint, after):
    """SIGINT at any moment of `study report`: one line, no traceback, and the record is whole or absent:
    the study's report attribute, report.json on the parent run and the trial runs' test metrics agree."""

    study = tiny_study(tmp_path, digits_checkpoint, search={"granularity": "global", "enqueue_baseline": True})
    study.run(n_trials=2, progress=False)
    stores = ["--storage", study.storage_url, "--tracking-uri", study.tracker.tracking_uri]
    proc, err = interrupted_command(tmp_path, ["study", "report", "tiny", *stores], after=after, timeout=180)
    assert "Traceback" not in err, err
    assert proc.returncode in (0, 130), err
    if proc.returncode == 130:
        assert "interrupted (Ctrl-C)" in err.strip().splitlines()[-1], err
    again = ct_tune.load_study("tiny", storage=study.storage_url, tracking_uri=study.tracker.tracking_uri)
    recorded = "ct_tune.report" in again.optuna_study.user_attrs
    client = again.tracker.client
    artifacts = [a.path for a in client.list_artifacts(again.parent_run_id)]
    trial_runs = [client.get_run(t.user_attrs["mlflow_run_id"]) for t in again.optuna_study.trials]
    with_test = [run for run in trial_runs if any(key.startswith("test.") for key in run.data.metrics)]
    assert recorded == ("report.json" in artifacts) == bool(with_test), (proc.returncode, err)
    assert recorded == (proc.returncode == 0 or "after its results were recorded" in err)


def interrupted_command(cwd: Path, args: list[str], *, after: float, timeout: float):
    """The installed ``ct-tune ARGS`` (the console script users run) sent SIGINT ``after`` seconds in: the
    finished process and its stderr."""
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import SOURCE_ROOT
    from tests.helpers import spawn

    env = {**os.environ, "PYTHONPATH": str(SOURCE_ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    command = Path(sys.executable).with_name("ct-tune")
    proc = spawn([str(command), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=timeout)
    return proc, err
