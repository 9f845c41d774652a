"""Replicates: a pipeline once per seed (``--seeds``), resumable seed by seed, one report over the seeds."""

from __future__ import annotations

from pathlib import Path

import ct_tune
from ct_tune.pipelines import seed_pipeline

import optuna
import pytest
import yaml
from mlflow import MlflowClient

from tests.helpers import listing
from tests.pipelines.test_run import _pipeline

SEEDS = ["--seeds", "0,1", "--trials", "2", "--no-progress"]
# Another dataset, as the shipped digits-to-mnist5k pipeline: the digits checkpoint never saw mnist5k, so every
# seed's split of it is fair game (a digits split other than the checkpoint's is refused). Its own classifier
# scores it (accuracy: no probe to fit per trial, a short test on 2 cores).
TRANSFER = {
    "data": {"name": "mnist5k", "seed": 0, "val_size": 300, "test_size": 300},
    "objectives": [{"name": "accuracy"}],
}


def _transfer(path: Path, checkpoint: Path) -> Path:
    _pipeline(path, checkpoint)
    data = yaml.safe_load(path.read_text())
    data["base"].update(TRANSFER)
    path.write_text(yaml.safe_dump(data))
    return path


def _trials(root: Path, study: str) -> dict[int, tuple[str, object]]:
    """Each trial's state and completion time: what a rerun must leave as it was."""
    loaded = optuna.load_study(study_name=study, storage=f"sqlite:///{root}/studies/optuna.db")
    return {trial.number: (trial.state.name, trial.datetime_complete) for trial in loaded.trials}


def _set_runs(root: Path) -> list:
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("ct-tune/pipe replicates")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def test_each_seed_seeds_split_samplers_and_checkpoint(tmp_path, digits_checkpoint):
    path = _pipeline(tmp_path / "p.yaml", digits_checkpoint)
    data = yaml.safe_load(path.read_text())
    data["base"]["model"]["checkpoint"] = str(tmp_path / "digits-seed{seed}.pt")
    data["stages"][1]["sampler"] = "random"
    one = seed_pipeline(ct_tune.pipelines.pipeline_from_dict(data), 3)
    assert one.name == "pipe-s3" and one.study_name("global") == "pipe-s3.global"
    assert one.base["data"] == {"name": "digits", "seed": 3}
    assert one.base["model"]["checkpoint"] == str(tmp_path / "digits-seed3.pt")
    assert [stage.sampler for stage in one.stages] == [{"name": "tpe", "seed": 3}, {"name": "random", "seed": 3}]


@pytest.mark.parametrize(
    ("seeds", "message"),
    [
        ("", "--seeds is empty"),
        ("0,1,0", "--seeds names seed 0 twice"),
        ("1,-2", "--seeds holds the negative seed -2"),
        ("0,x", "--seeds '0,x' is not a list of whole numbers"),
    ],
)
def test_bad_seeds_are_one_line_exit_2_and_write_nothing(cli_fast, tmp_path, digits_checkpoint, seeds, message):
    _transfer(tmp_path / "p.yaml", digits_checkpoint)
    before = listing(tmp_path)
    result = cli_fast("pipeline", "run", "p.yaml", f"--seeds={seeds}", "--no-progress")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "like 0,1,2" in lines[0], result.stderr
    assert listing(tmp_path) == before


def test_a_seed_whose_split_the_checkpoint_saw_is_refused_before_any_seed_runs(cli_fast, tmp_path, digits_checkpoint):
    _pipeline(tmp_path / "p.yaml", digits_checkpoint)  # searches digits, the checkpoint's own data (split seed 0)
    before = listing(tmp_path)
    result = cli_fast("pipeline", "run", "p.yaml", *SEEDS)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pretrained on digits with another split (seed 0 -> 1)" in lines[0], result.stderr
    assert listing(tmp_path) == before  # seed 0 did not run first


@pytest.mark.slow
def test_two_seeds_interrupted_resumed_reported_and_a_changed_file_refused(
    cli, cli_fast, tmp_path, digits_checkpoint, monkeypatch
):
    path = _transfer(tmp_path / "p.yaml", digits_checkpoint)
    monkeypatch.chdir(tmp_path)

    def interrupt_in_seed_1(line: str) -> None:  # Ctrl-C once seed 1's second stage exists, before it runs
        if "created study pipe-s1.block" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ct_tune.run_pipeline(path, seeds=[0, 1], trials=2, progress=False, say=interrupt_in_seed_1)
    finished = {name: _trials(tmp_path, name) for name in ("pipe-s0.global", "pipe-s0.block", "pipe-s1.global")}
    assert all(len(trials) == 2 for trials in finished.values())
    assert _trials(tmp_path, "pipe-s1.block") == {0: ("WAITING", None)}  # its warm start, enqueued, not run
    (interrupted,) = _set_runs(tmp_path)
    assert interrupted.info.status == "KILLED"

    result = cli("pipeline", "run", "p.yaml", *SEEDS, "--json")  # resumes seed 1's second stage only
    assert result.returncode == 0, result.stderr
    assert {name: _trials(tmp_path, name) for name in finished} == finished
    assert len(_trials(tmp_path, "pipe-s1.block")) == 2
    payload = result.json()
    assert payload["seeds"] == [0, 1] and set(payload["runs"]) == {"0", "1"}
    rows = {(row["profile"], row["stage"]): row for row in payload["replicates"]}
    assert set(rows) == {("ReLU baseline", "global"), ("best global", "global"), ("best block", "block")}
    for (profile, stage), row in rows.items():
        reports = [payload["runs"][s]["report"] for s in ("0", "1")]
        picked = [
            next(r for r in report if r["stage"] == stage and r["is_baseline"] == (profile == "ReLU baseline"))
            for report in reports
        ]
        assert row["test"] == {str(s): picked[s]["test"]["accuracy"] for s in (0, 1)}  # each seed's own value
        if profile == "ReLU baseline":
            assert row["gain"] is None
            continue
        gain = row["gain"]
        assert gain["seeds"] == [0, 1] and len(gain["gains"]) == 2
        assert gain["t_low"] <= gain["mean"] <= gain["t_high"]
        assert gain["positive_seeds"] == sum(g > 0 for g in gain["gains"])
        assert gain["verdict"] in (
            "within noise (the 95% interval over seeds holds 0)",
            "a gain beyond noise",
            "a loss beyond noise",
        )
        for seed in (0, 1):
            relu = next(r for r in reports[seed] if r["is_baseline"])["test"]["accuracy"]
            assert gain["gains"][seed] == pytest.approx(picked[seed]["test"]["accuracy"] - relu, abs=1e-6)

    # the set's MLflow run: the interrupted one, finished now, with metrics, report, table and plot
    (done,) = _set_runs(tmp_path)
    assert done.info.run_id == interrupted.info.run_id == payload["mlflow_run_id"]
    assert done.info.status == "FINISHED" and done.data.tags["ct_tune.seeds"] == "0,1"
    gain = rows[("best block", "block")]["gain"]
    assert done.data.metrics["block.accuracy.gain.mean"] == pytest.approx(gain["mean"])
    assert done.data.metrics["block.accuracy.gain.t_low"] == pytest.approx(gain["t_low"])
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    artifacts = {a.path for a in client.list_artifacts(done.info.run_id)}
    assert {"report.json", "replicates_table.json", "plots"} <= artifacts
    assert [Path(p).name for p in payload["plots"]] == ["gains_per_seed.png"]
    for seed in ("0", "1"):
        for stage in payload["runs"][seed]["stages"]:
            tags = client.get_run(stage["parent_run_id"]).data.tags
            assert (tags["ct_tune.replicate_set"], tags["ct_tune.seed"]) == (done.info.run_id, seed)

    monkeypatch.setenv("COLUMNS", "200")  # the table's width, whatever the terminal CI runs in (rich wraps cells)
    shown = cli_fast("pipeline", "run", "p.yaml", *SEEDS)  # finished: nothing reruns, the table again
    assert shown.returncode == 0, shown.stderr
    assert {name: _trials(tmp_path, name) for name in finished} == finished
    for text in ("pipe: 2 seed(s)", "95% t over seeds", "best block", "reference", "gains_per_seed.png"):
        assert text in shown.stdout, shown.stdout

    # the same set with a changed pipeline file: one line, exit 2, nothing written, no new MLflow run
    data = yaml.safe_load(path.read_text())
    data["stages"][1]["warm_start"]["width"] = 0.1
    path.write_text(yaml.safe_dump(data))
    before = listing(tmp_path)
    refused = cli_fast("pipeline", "run", "p.yaml", *SEEDS)
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "the pipeline changed since seed 0's study pipe-s0.global was made" in lines[0]
    assert listing(tmp_path) == before and len(_set_runs(tmp_path)) == 1
