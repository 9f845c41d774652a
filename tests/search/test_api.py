"""The Python API, in this process, as a notebook user drives it: create, run with 2 workers, inspect, export,
report, load again; errors are InputError with the line the CLI prints."""

from __future__ import annotations

import json
from pathlib import Path

import ct_tune
from ct_tune import InputError
from ct_tune.bench._bench import open_data, open_model
from ct_tune.search import RunSummary, StudyReport, TrialResult, spec_from_dict

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.conftest import write_spec

pytestmark = pytest.mark.slow


def stores(tmp_path: Path) -> dict[str, str]:
    return {"storage": f"sqlite:///{tmp_path}/optuna.db", "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}


def test_notebook_session_create_run_two_workers_inspect_export_report(tmp_path, digits_checkpoint, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = {
        "model": {"checkpoint": str(digits_checkpoint)},
        "data": {"name": "digits", "seed": 0},
        "search": {"granularity": "stage", "enqueue_baseline": True},
        "objectives": ["accuracy"],
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 2},
        "budget": {"n_trials": 6},
        "run": {"device": "cpu", "batch_size": 128},
    }
    study = ct_tune.create_study(spec, name="notebook", **stores(tmp_path))
    assert isinstance(study.optuna_study, optuna.Study) and study.units == ["stem", "layer1", "layer2", "layer3"]
    assert (
        study.experiment_id
        == MlflowClient(stores(tmp_path)["tracking_uri"]).get_experiment_by_name("ct-tune/notebook").experiment_id
    )
    assert study.best() == [] and study.status().trials["WAITING"] == 1  # the ReLU baseline, enqueued

    summary = study.run(workers=2, devices="cpu", progress=False, oversubscribe=True)
    assert isinstance(summary, RunSummary) and summary.workers == 2
    assert (summary.finished, summary.failed, summary.reason) == (6, 0, "budget reached")
    assert set(summary.seconds) == {"evaluate", "tracking", "optuna"} and summary.seconds["evaluate"] > 0
    assert sorted(line.number for line in summary.trials) == list(range(6))
    complete = study.optuna_study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 6 and not study.optuna_study.get_trials(states=(TrialState.RUNNING,))

    (best,) = study.best()
    assert isinstance(best, TrialResult) and best.values["accuracy"] == max(t.value for t in complete)
    assert best.profile.betas == best.betas and best.profile.fingerprint == study.meta["fingerprint"]
    baseline = study.baseline()
    assert baseline is not None and set(baseline.betas.values()) == {1.0} and baseline.kind == "baseline"
    status = study.status()
    assert status.trials["COMPLETE"] == 6 and status.best[0].number == best.number
    json.dumps(status.to_dict())  # what `study status --json` prints

    profile = study.export(tmp_path / "best.json")
    assert ct_tune.BetaProfile.load(tmp_path / "best.json") == profile
    assert study.export(trial=baseline.number).betas == baseline.betas
    report = study.report()
    assert isinstance(report, StudyReport) and report.test_samples == 359
    assert [row.is_baseline for row in report.trials] == [False, True]
    assert study.trial(best.number).test == report.trials[0].test  # stored on the study too

    again = ct_tune.load_study("notebook", storage=stores(tmp_path)["storage"])
    assert again.best()[0].number == best.number and again.tracking_uri == stores(tmp_path)["tracking_uri"]
    more = again.run(n_trials=1, workers=2, devices="cpu", progress=False, oversubscribe=True)
    assert more.finished == 1 and again.status().trials["COMPLETE"] == 7
    assert more.workers == 1  # never more workers than trials left


def test_load_by_spec_file_and_run_in_process(tmp_path, digits_checkpoint, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_spec(
        tmp_path / "spec.yaml",
        digits_checkpoint,
        name="from-file",
        budget={"n_trials": 2},
        storage=stores(tmp_path)["storage"],
        tracking_uri=stores(tmp_path)["tracking_uri"],
    )
    created = ct_tune.create_study(tmp_path / "spec.yaml")
    assert created.name == "from-file"
    study = ct_tune.load_study(tmp_path / "spec.yaml")  # name and storage from the spec it was made from
    assert study.name == "from-file" and "sqlite" in repr(study)
    summary = study.run(progress=False)
    assert summary.workers == 1 and summary.finished == 2
    assert study.run(progress=False).reason.startswith("budget already reached")
    resumed = ct_tune.create_study(tmp_path / "spec.yaml", resume_if_exists=True)
    assert resumed.resumed and resumed.counts()["COMPLETE"] == 2


def test_api_errors_are_the_cli_lines(tmp_path, digits_checkpoint, cli_fast, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_spec(tmp_path / "spec.yaml", digits_checkpoint, name="twice")
    ct_tune.create_study(tmp_path / "spec.yaml", **stores(tmp_path))
    with pytest.raises(InputError) as api:
        ct_tune.create_study(tmp_path / "spec.yaml", **stores(tmp_path))
    cli = cli_fast("study", "create", "spec.yaml", "--storage", stores(tmp_path)["storage"])
    assert cli.returncode == 2 and cli.stderr.strip() == f"ct-tune: error: {api.value}"
    with pytest.raises(InputError) as api:
        ct_tune.load_study("nothing-here", storage=stores(tmp_path)["storage"])
    cli = cli_fast("study", "status", "nothing-here", "--storage", stores(tmp_path)["storage"])
    assert cli.stderr.strip() == f"ct-tune: error: {api.value}" and "studies there: twice" in str(api.value)
    study = ct_tune.load_study("twice", storage=stores(tmp_path)["storage"])
    for bad, message in (
        ({"n_trials": 0}, "--n-trials must be at least 1"),
        ({"workers": 0}, "--workers must be at least 1"),
        ({"devices": "tpu"}, "is not cpu, auto, or a list like cuda:0,cuda:1"),
        ({"heartbeat": 0}, "--heartbeat must be at least 1 second"),
    ):
        with pytest.raises(InputError, match=message):
            study.run(progress=False, **bad)
    assert study.counts()["COMPLETE"] == 0 and study.counts()["RUNNING"] == 0
    with pytest.raises(InputError, match="a study spec is a YAML file, a mapping or a StudySpec"):
        ct_tune.create_study(42)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="the study needs a name"):
        ct_tune.create_study({"model": {"checkpoint": str(digits_checkpoint)}}, **stores(tmp_path))
    (tmp_path / "one").mkdir()
    with pytest.raises(InputError, match="are one database"):  # one file, two spellings: refused before writing
        ct_tune.create_study(
            tmp_path / "spec.yaml",
            name="shared",
            storage=f"sqlite:///{tmp_path}/one/../one/both.db",
            tracking_uri=f"sqlite:///{tmp_path}/one/both.db",
        )
    assert not (tmp_path / "one" / "both.db").exists()


def test_run_pipeline_from_a_mapping(tmp_path, digits_checkpoint, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipeline = {
        "name": "py",
        "base": {
            "model": {"checkpoint": str(digits_checkpoint)},
            "data": {"name": "digits", "seed": 0},
            "objectives": ["accuracy"],
            "run": {"device": "cpu", "batch_size": 256},
            **stores(tmp_path),
        },
        "stages": [
            {"name": "global", "search": {"granularity": "global"}, "budget": {"n_trials": 3}},
            {
                "name": "block",
                "warm_start": {"from": "global"},
                "search": {"granularity": "block"},
                "budget": {"n_trials": 3},
            },
        ],
    }
    lines: list[str] = []
    result = ct_tune.run_pipeline(pipeline, progress=False, say=lines.append)
    assert [stage.study for stage in result.stages] == ["py.global", "py.block"]
    assert [stage.finished for stage in result.stages] == [3, 3]
    assert result.report[0].is_baseline and {row.stage for row in result.report[1:]} == {"global", "block"}
    assert result.profile_path and Path(result.profile_path).is_file()
    assert any("warm-started from global" in line for line in lines)
    block = ct_tune.load_study("py.block", storage=stores(tmp_path)["storage"])
    warm = block.optuna_study.trials[0]
    assert warm.user_attrs["ct_tune.kind"] == "warm-start"
    rerun = ct_tune.run_pipeline(pipeline, progress=False, say=lines.append)
    # resumed: both budgets already used, nothing ran; a stage's outcome counts its study's trials (and their
    # seconds) from the storage, so the rerun reports what the stages hold
    assert [stage.finished for stage in rerun.stages] == [3, 3] and len(block.optuna_study.trials) == 3
    assert [stage.seconds for stage in rerun.stages] == [stage.seconds for stage in result.stages]
    assert all(stage.seconds > 0 for stage in result.stages)


def test_python_api_names_are_keyword_only_after_the_first():
    import inspect

    for function in (ct_tune.create_study, ct_tune.load_study, ct_tune.run_pipeline):
        parameters = list(inspect.signature(function).parameters.values())
        assert all(p.kind is p.KEYWORD_ONLY for p in parameters[1:]), function.__name__
    for method in (ct_tune.Study.run, ct_tune.Study.report):
        parameters = list(inspect.signature(method).parameters.values())[1:]
        assert all(p.kind is p.KEYWORD_ONLY for p in parameters), method.__name__
    assert list(inspect.signature(ct_tune.Study.export).parameters)[1] == "path"


def test_a_model_without_weights_is_built_alike_in_every_process_and_said_so(tmp_path, monkeypatch, caplog):
    """No checkpoint: random weights under a fixed seed, so the run's bench matches the creating one."""
    import torch

    monkeypatch.chdir(tmp_path)
    spec = {
        "model": {"name": "cifar_resnet_small"},
        "data": {"name": "digits"},
        "budget": {"n_trials": 1},
        "run": {"device": "cpu"},
    }
    with caplog.at_level("WARNING", logger="ct_tune"):
        study = ct_tune.create_study(spec, name="untrained", **stores(tmp_path))
    assert "model cifar_resnet_small has no checkpoint or pretrained weights" in caplog.text
    torch.manual_seed(1234)
    study.run(progress=False)  # opens the model again, after the caller's RNG has moved
    assert {state: n for state, n in study.counts().items() if n} == {"COMPLETE": 1}

    parsed = spec_from_dict(spec)
    data = open_data(parsed, prepare=False)
    state = torch.random.get_rng_state()
    first, second = open_model(parsed, data), open_model(parsed, data)
    assert torch.equal(torch.random.get_rng_state(), state)  # building it leaves the caller's RNG alone
    weights = [model.net.state_dict() for model in (first, second)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_a_checkpoint_replaced_on_disk_is_refused(tmp_path, digits_checkpoint, monkeypatch):
    """Another checkpoint of the same architecture under the study's path: no worker scores with it."""
    import shutil

    import torch

    monkeypatch.chdir(tmp_path)
    checkpoint = tmp_path / "model.pt"
    shutil.copy(digits_checkpoint, checkpoint)
    spec = {
        "model": {"checkpoint": str(checkpoint)},
        "data": {"name": "digits", "seed": 0},
        "budget": {"n_trials": 3},
        "run": {"device": "cpu"},
    }
    study = ct_tune.create_study(spec, name="swapped", **stores(tmp_path))
    saved = torch.load(checkpoint, weights_only=True)
    weights = saved["state_dict"]
    name = next(key for key, value in weights.items() if value.is_floating_point())
    weights[name] = weights[name] + 0.01  # the same architecture, other weights
    torch.save(saved, checkpoint)
    with pytest.raises(InputError, match="the model's weights differ") as error:
        study.run(n_trials=1, progress=False)
    assert len(str(error.value).splitlines()) == 1
    assert study.counts().get("RUNNING", 0) == 0 and study.counts().get("COMPLETE", 0) == 0
