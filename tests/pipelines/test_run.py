"""Pipelines and the quickstart: shipped files, validation, warm starts, end to end on real stores."""

from __future__ import annotations

from pathlib import Path

import ct_tune
from ct_tune.pipelines import load_pipeline, warm_start_ranges

import pytest
import yaml
from mlflow import MlflowClient

from tests.conftest import SOURCE_ROOT, write_spec
from tests.helpers import listing, mlflow_runs, optuna_trials

PIPELINES = sorted((SOURCE_ROOT / "pipelines").glob("*.yaml"))
UNITS = ["stem", "layer1.0", "layer2.0", "layer3.0"]


def test_every_shipped_pipeline_is_valid():
    assert len(PIPELINES) >= 6
    for path in PIPELINES:
        pipeline = load_pipeline(path)  # each stage is also validated as a full study spec
        assert pipeline.name == path.stem
        assert pipeline.stages[0].search["enqueue_paper_grid"] is True, path
        for stage in pipeline.stages[1:]:
            assert stage.warm_start is not None, (path, stage.name)


def test_quickstart_runs_the_shipped_offline_transfer_pipeline():
    from ct_tune.pipelines import quickstart_pipeline

    shipped = yaml.safe_load((SOURCE_ROOT / "pipelines" / "digits-to-mnist5k-transfer.yaml").read_text())
    ours = quickstart_pipeline()
    assert {**ours, "name": shipped["name"]} == shipped


def _pipeline(path: Path, checkpoint: Path, **changes) -> Path:
    data = {
        "name": "pipe",
        "base": {
            "model": {"checkpoint": str(checkpoint)},
            "data": {"name": "digits", "seed": 0},
            "objectives": [{"name": "accuracy"}],
            "run": {"device": "cpu", "batch_size": 256},
        },
        "stages": [
            {
                "name": "global",
                "search": {"granularity": "global", "enqueue_baseline": True},
                "sampler": {"name": "tpe", "seed": 0},
                "budget": {"n_trials": 4},
            },
            {
                "name": "block",
                "warm_start": {"from": "global", "width": 0.05},
                "search": {"granularity": "block"},
                "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 2},
                "budget": {"n_trials": 3},
            },
        ],
    }
    data.update(changes)
    path.write_text(yaml.safe_dump(data))
    return path


BAD_PIPELINES = {
    "order": (
        {"stages": [{"name": "a", "warm_start": {"from": "b"}}, {"name": "b"}]},
        "warm-starts from 'b', which is not an earlier stage",
    ),
    "duplicate": ({"stages": [{"name": "a"}, {"name": "a"}]}, "stage names must be unique"),
    "report": ({"report": ["nope"]}, "report names unknown stage(s) nope"),
    "base search": ({"base": {"search": {"granularity": "block"}}}, "base.search belongs to a stage"),
    "stage spec": (
        {"stages": [{"name": "a", "sampler": "tpee", "budget": {"n_trials": 2}}]},
        "stage 'a'",
    ),
    "width": ({"stages": [{"name": "a"}, {"name": "b", "warm_start": {"from": "a", "width": 0}}]}, "width"),
    "unknown key": ({"stagez": []}, "stagez"),
}


@pytest.mark.parametrize("kind", list(BAD_PIPELINES))
def test_bad_pipelines_are_one_line_exit_2_and_create_nothing(cli_fast, tmp_path, digits_checkpoint, kind):
    change, message = BAD_PIPELINES[kind]
    path = _pipeline(tmp_path / "bad.yaml", digits_checkpoint)
    data = yaml.safe_load(path.read_text())
    for key, value in change.items():
        data[key] = {**data[key], **value} if key == "base" else value
    path.write_text(yaml.safe_dump(data))
    before = listing(tmp_path)
    result = cli_fast("pipeline", "run", "bad.yaml", "--no-progress")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert listing(tmp_path) == before  # no store, no study, no log


def test_missing_pipeline_file_and_warm_start_without_result(cli_fast, tmp_path, digits_checkpoint):
    result = cli_fast("pipeline", "run", "nope.yaml")
    assert result.returncode == 2 and "nope.yaml does not exist" in result.stderr

    _pipeline(tmp_path / "p.yaml", digits_checkpoint)
    before = listing(tmp_path)
    result = cli_fast("pipeline", "run", "p.yaml", "--workers", "0")  # refused before any stage's study exists
    assert result.returncode == 2 and "--workers must be at least 1" in result.stderr
    assert listing(tmp_path) == before

    # a first stage whose every trial fails leaves nothing to warm-start from: one line, exit 2
    data = yaml.safe_load((tmp_path / "p.yaml").read_text())
    data["stages"][0]["search"] = {"granularity": "global", "enqueue_baseline": False}
    data["stages"][0]["budget"] = {"timeout": 0.001}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    result = cli_fast("pipeline", "run", "p.yaml", "--no-progress")
    assert result.returncode == 2, result.stderr
    assert "no completed trial to warm-start from" in result.stderr.strip().splitlines()[-1]


def test_warm_start_ranges_are_centred_and_clipped():
    assert warm_start_ranges([{"a": 0.8}], 0.1, 0.7, 1.0) == {"a": {"low": 0.7, "high": 0.9}}
    # several (Pareto) profiles: one range covering them all
    assert warm_start_ranges([{"a": 0.8}, {"a": 0.85}], 0.05, 0.7, 1.0) == {"a": {"low": 0.75, "high": 0.9}}
    # at the top edge the range stays inside (0, 1] and keeps its width
    assert warm_start_ranges([{"a": 1.0}], 0.1, 0.7, 1.0) == {"a": {"low": 0.9, "high": 1.0}}


def test_search_ranges_validated_against_the_model(cli_fast, tmp_path, digits_checkpoint):
    write_spec(
        tmp_path / "s.yaml",
        digits_checkpoint,
        name="ranged",
        search={"granularity": "block", "ranges": {"layer9.0": {"low": 0.8, "high": 1.0}}},
    )
    result = cli_fast("study", "create", "s.yaml")
    assert result.returncode == 2
    assert "search.ranges names unknown unit(s) layer9.0" in result.stderr and "stem" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]  # refused before a store was opened

    write_spec(
        tmp_path / "s.yaml",
        digits_checkpoint,
        name="ranged",
        search={"granularity": "block", "ranges": {"stem": {"low": 0.8, "high": 0.9}}},
    )
    result = cli_fast("study", "create", "s.yaml")
    assert result.returncode == 2 and "enqueue_baseline needs beta 1.0 inside ranges.stem" in result.stderr

    write_spec(
        tmp_path / "s.yaml",
        digits_checkpoint,
        name="ranged",
        search={"granularity": "block", "enqueue_baseline": False, "ranges": {"stem": {"low": 0.8, "high": 0.9}}},
        budget={"n_trials": 3},
    )
    assert cli_fast("study", "create", "s.yaml").returncode == 0
    assert cli_fast("study", "run", "ranged", "--no-progress").returncode == 0
    for trial in optuna_trials(tmp_path, "ranged"):
        assert 0.8 <= trial["params"]["beta.stem"] <= 0.9
        assert 0.7 <= trial["params"]["beta.layer3.0"] <= 1.0


@pytest.mark.slow
def test_pipeline_end_to_end_warm_start_links_report_and_resume(cli, tmp_path, digits_checkpoint):
    _pipeline(tmp_path / "p.yaml", digits_checkpoint)
    result = cli("pipeline", "run", "p.yaml", "--no-progress", "--json")
    assert result.returncode == 0, result.stderr
    payload = result.json()
    assert [s["study"] for s in payload["stages"]] == ["pipe.global", "pipe.block"]

    glob = {t["number"]: t for t in optuna_trials(tmp_path, "pipe.global")}
    assert len(glob) == 4
    assert glob[0]["params"] == {"beta.global": 1.0}  # the baseline first
    rows = payload["report"]  # the baseline once, then each stage's best
    best_global = rows[1]["betas"]["global"]
    assert rows[1]["val"]["accuracy"] == max(t["value"]["accuracy"] for t in glob.values())

    # stage 2 starts from the global best on every block and searches within +-0.05 of it
    block = sorted(optuna_trials(tmp_path, "pipe.block"), key=lambda t: t["number"])
    assert len(block) == 3
    assert block[0]["params"] == {f"beta.{unit}": best_global for unit in UNITS}
    assert block[0]["user_attrs"]["ct_tune.kind"] == "warm-start"
    low, high = max(0.7, best_global - 0.05), min(1.0, best_global + 0.05)
    for trial in block:
        for unit in UNITS:
            assert low - 1e-9 <= trial["params"][f"beta.{unit}"] <= high + 1e-9

    # the report: scored on test
    assert rows[0]["is_baseline"] and rows[0]["betas"] == {"global": 1.0}
    assert [(r["stage"], r["is_baseline"]) for r in rows[1:]] == [("global", False), ("block", False)]
    assert all(0.8 < r["test"]["accuracy"] <= 1.0 for r in rows)
    # how sure: intervals, and every stage's best against the ReLU baseline and the global stage's best
    relu, glob_best, block_best = rows
    assert all(
        r["test_ci"]["accuracy"]["low"] <= r["test"]["accuracy"] <= r["test_ci"]["accuracy"]["high"] for r in rows
    )
    assert payload["evidence"]["resamples"] == 4000
    assert payload["global_reference"]["block"]["number"] == glob_best["number"]
    assert glob_best["vs_global"] is None  # the global stage's best is the best global profile
    against = block_best["vs_global"]["accuracy"]
    # (test values are float32 means, differences float64 ones: equal to 1e-6)
    assert against["diff"] == pytest.approx(block_best["test"]["accuracy"] - glob_best["test"]["accuracy"], abs=1e-6)
    if set(block_best["betas"].values()) == {1.0}:  # the warm start's ReLU profile won: it is its own baseline
        assert block_best["vs_relu"] is None
    else:
        assert block_best["vs_relu"]["accuracy"]["diff"] == pytest.approx(
            block_best["test"]["accuracy"] - relu["test"]["accuracy"], abs=1e-6
        )
    profile = ct_tune.BetaProfile.load(payload["profile"])
    assert profile.granularity == "block" and set(profile.betas) == set(UNITS)

    # MLflow: each stage is its own experiment run, linked to the stage before by tags
    (global_parent,), _ = mlflow_runs(tmp_path, "pipe.global")
    (block_parent,), children = mlflow_runs(tmp_path, "pipe.block")
    assert len(children) == 3
    assert block_parent.data.tags["ct_tune.pipeline"] == "pipe"
    assert block_parent.data.tags["ct_tune.stage"] == "block"
    assert block_parent.data.tags["ct_tune.previous_stage_run"] == global_parent.info.run_id
    assert global_parent.data.tags["ct_tune.stage"] == "global"
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")

    def assert_every_parent_ended() -> None:  # a stage's run spans its launch and is ended with it
        for parent in (global_parent, block_parent):
            run = client.get_run(parent.info.run_id)
            assert run.info.status == "FINISHED" and run.info.end_time, (run.data.tags["ct_tune.stage"], run.info)

    assert_every_parent_ended()
    # the filter the README shows for a pipeline's runs
    experiments = [e.experiment_id for e in client.search_experiments() if e.name.startswith("ct-tune/pipe.")]
    tagged = client.search_runs(experiments, "tags.`ct_tune.pipeline` = 'pipe'")
    assert {r.info.run_id for r in tagged} == {global_parent.info.run_id, block_parent.info.run_id}
    shown = cli("pipeline", "run", "p.yaml", "--no-progress").stdout
    assert "dashboards: ct-tune ui" in shown
    assert "paired comparisons on the same test samples" in shown and "best global" in shown
    assert f"block: best of stage global (trial {glob_best['number']})" in shown
    assert "intervals: 95% percentile bootstrap over test samples (4000 resamples, seed 0)" in shown

    # run again: every stage has used its budget, nothing is added, and the stages' runs are ended again
    for name, count in (("pipe.global", 4), ("pipe.block", 3)):
        assert len(optuna_trials(tmp_path, name)) == count
    assert_every_parent_ended()


@pytest.mark.slow
def test_quickstart_offline_with_two_workers(cli, tmp_path, digits_checkpoint):
    """The README's main command, at a small budget: reuses a cached checkpoint, 2 workers, a table."""
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "cifar_resnet_small-digits-seed0.pt").symlink_to(digits_checkpoint)
    result = cli("quickstart", "--trials", "3", "--workers", "2", "--oversubscribe", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "reusing the pretrained model" in result.stderr
    assert "worker 1 ready" in result.stderr  # two worker processes
    out = result.stdout
    for label in ("ReLU baseline", "best global", "best block", "test probe", "profiles/quickstart.json"):
        assert label in out, out
    assert "ct-tune ui --tracking-uri" in out
    closing = out.strip().splitlines()[-1]  # what one run can and cannot show, and how to get replicates
    assert closing.startswith("one run: the ReLU baseline row is the same") and "--seeds 0,1,2" in closing
    assert "Epoch" not in out and "INFO" not in out  # logs and progress stay on stderr
    profile = ct_tune.BetaProfile.load(tmp_path / "profiles" / "quickstart.json")
    assert set(profile.betas) == set(UNITS)
    plots = [line for line in out.splitlines() if line.startswith("plots of quickstart.block")]
    assert plots and (tmp_path / plots[0].split(": ", 1)[1].split(", ")[0]).is_file()
