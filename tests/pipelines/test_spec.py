"""Pipeline files: each stage's study spec merged from the base, warm starts mapped, clipped and ranged, and
every error one line naming the stage or field."""

from __future__ import annotations

import ct_tune  # noqa: F401  (torchvision compat first)
from ct_tune import InputError
from ct_tune.models import DEFAULT_MODEL, create_model
from ct_tune.pipelines import load_pipeline, pipeline_from_dict
from ct_tune.pipelines._spec import stage_spec
from ct_tune.pipelines._warm import map_profile, warm_start_ranges
from ct_tune.search import spec_from_dict
from ct_tune.steering import checked_trace

import pytest
import torch

from tests.conftest import SOURCE_ROOT

BASE = {
    "model": {"checkpoint": "checkpoints/net.pt"},
    "data": {"name": "digits", "seed": 1},
    "objectives": ["accuracy"],
    "run": {"device": "cpu", "batch_size": 128},
    "storage": "sqlite:///studies/p.db",
}


def pipeline(*stages: dict, **top) -> dict:
    return {"name": "p", "base": BASE, "stages": list(stages), **top}


def error_of(data) -> str:
    with pytest.raises(InputError) as error:
        pipeline_from_dict(data, source="p.yaml")
    text = str(error.value)
    assert "\n" not in text and text.startswith("p.yaml"), text
    return text


def test_stage_specs_merge_the_base_and_the_stage():
    parsed = pipeline_from_dict(
        pipeline(
            {
                "name": "global",
                "search": {"granularity": "global", "enqueue_paper_grid": True},
                "budget": {"n_trials": 40},
            },
            {
                "name": "block",
                "warm_start": {"from": "global", "width": 0.05},
                "search": {"granularity": "block"},
                "objectives": [{"name": "accuracy", "top_k": 3}, "probe"],
                "sampler": "nsga2",
                "run": {"trials_per_batch": 2},
            },
        )
    )
    assert parsed.report_stages == ["global", "block"] and parsed.study_name("block") == "p.block"
    first = stage_spec(parsed, "global")
    assert first.name == "p.global" and first.search.enqueue_baseline and first.search.enqueue_paper_grid
    assert first.budget.n_trials == 40 and first.data.seed == 1 and first.storage == "sqlite:///studies/p.db"
    second = stage_spec(parsed, "block")
    assert second.name == "p.block" and second.search.granularity == "block"
    assert (second.run.device, second.run.batch_size, second.run.trials_per_batch) == ("cpu", 128, 2)  # merged
    assert second.objective_names == ["accuracy", "probe"] and second.objectives[0].top_k == 3  # replaced
    assert second.sampler.name == "nsga2" and second.budget.n_trials == 50
    # warm-started: the baseline ran in the first stage, the grid is the first stage's business
    assert not second.search.enqueue_baseline and not second.search.enqueue_paper_grid and not second.search.ranges
    ranged = stage_spec(parsed, "block", ranges={"stem": {"low": 0.8, "high": 0.9}})
    assert ranged.search.range_of("stem").low == 0.8 and ranged.search.range_of("layer1.0") == second.search.beta
    assert BASE["run"] == {"device": "cpu", "batch_size": 128}  # the base is not modified by merging


def test_a_warm_started_stage_may_keep_its_baseline():
    parsed = pipeline_from_dict(
        pipeline(
            {"name": "a", "search": {"granularity": "global"}},
            {"name": "b", "warm_start": {"from": "a"}, "search": {"enqueue_baseline": True}},
        ),
    )
    assert stage_spec(parsed, "b").search.enqueue_baseline and parsed.stage("b").warm_start.width == 0.1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (pipeline({"name": "a"}, {"name": "a"}), "stage names must be unique; got a, a"),
        (
            pipeline({"name": "a", "warm_start": {"from": "b"}}, {"name": "b"}),
            "stage 'a' warm-starts from 'b', which is not an earlier stage (earlier: none)",
        ),
        (pipeline({"name": "a"}, {"name": "b", "warm_start": {"from": "b"}}), "(earlier: a)"),
        (pipeline({"name": "a"}, report=["a", "zzz"]), "report names unknown stage(s) zzz; stages: a"),
        ({"name": "p", "base": {**BASE, "search": {}}, "stages": [{"name": "a"}]}, "base.search belongs to a stage"),
        ({"name": "p", "base": {**BASE, "budget": {}}, "stages": [{"name": "a"}]}, "base.budget belongs to a stage"),
        (pipeline({"name": "a b"}), "stages.0.name: got 'a b'; string should match pattern"),
        ({**pipeline({"name": "a"}), "name": ".."}, "name: '..' starts with '.'; use 1 to 100 letters"),
        ({**pipeline({"name": "a"}), "name": "p" * 99}, "is longer than 100 characters: shorten the pipeline's"),
        (pipeline(), "stages: got []; list should have at least 1 item"),
        (pipeline({"name": "a", "serach": {}}), "unknown field 'stages.0.serach'"),
        (pipeline({"name": "a"}, {"name": "b", "warm_start": {"from": "a", "width": 0}}), "warm_start.width: got 0"),
        (
            pipeline({"name": "a"}, {"name": "b", "warm_start": {"from": "a", "width": float("nan")}}),
            "warm_start.width: got nan; input should be a finite number",
        ),
        ({"name": "p", "stages": [{"name": "a"}]}, "base: required field is missing"),
        (
            pipeline({"name": "a"}, {"name": "b", "search": {"granularity": "layer"}}),
            "p.yaml stage 'b': search.granularity: got 'layer'",
        ),
        (
            pipeline({"name": "a", "budget": {"n_trials": 0}}),
            "p.yaml stage 'a': budget.n_trials: got 0",
        ),
        ({"name": "p", "base": {"data": {"name": "digits"}}, "stages": [{"name": "a"}]}, "model: required field"),
    ],
)
def test_pipeline_errors_are_one_line(data, message):
    assert message in error_of(data)


def test_a_pipeline_that_is_not_a_mapping():
    for data in (None, [], "name: p"):
        assert "a pipeline is a YAML mapping with name, base and stages" in error_of(data)


def test_shipped_pipelines_validate(tmp_path):
    files = sorted((SOURCE_ROOT / "pipelines").glob("*.yaml"))
    assert files
    for path in files:
        parsed = load_pipeline(path)
        assert [stage_spec(parsed, stage.name).name for stage in parsed.stages] == [
            f"{parsed.name}.{stage.name}" for stage in parsed.stages
        ]
    with pytest.raises(InputError, match=r"pipeline file .* does not exist"):
        load_pipeline(tmp_path / "missing.yaml")


def test_warm_start_ranges():
    assert warm_start_ranges([{"a": 0.85}], 0.1, 0.7, 1.0) == {"a": {"low": 0.75, "high": 0.95}}
    assert warm_start_ranges([{"a": 0.8}, {"a": 0.9}], 0.05, 0.7, 1.0) == {"a": {"low": 0.75, "high": 0.95}}
    assert warm_start_ranges([{"a": 0.98}], 0.1, 0.7, 1.0) == {"a": {"low": 0.88, "high": 1.0}}  # clipped at 1
    edge = warm_start_ranges([{"a": 0.5}], 0.1, 0.7, 1.0)["a"]  # the earlier best below this stage's range
    assert edge == {"low": 0.7, "high": 0.9} and edge["low"] < edge["high"]
    for ranges in (edge, warm_start_ranges([{"a": 1.0}], 0.1, 0.7, 1.0)["a"]):
        spec_from_dict(  # every range made is one the spec accepts
            {"model": {"checkpoint": "c"}, "search": {"ranges": {"a": ranges}, "enqueue_baseline": False}}
        )


def test_map_profile_between_granularities():
    net = create_model(DEFAULT_MODEL, num_classes=10, in_channels=1, input_size=8).net
    trace = checked_trace(net, torch.zeros(1, 1, 8, 8))
    sites = trace.sites
    assert map_profile(net, trace, {"global": 0.8}, "global", "block") == {
        "stem": 0.8,
        "layer1.0": 0.8,
        "layer2.0": 0.8,
        "layer3.0": 0.8,
    }
    per_site = {site.name: 0.7 + 0.05 * index for index, site in enumerate(sites)}
    blocks = map_profile(net, trace, per_site, "site", "block")
    layer1 = [value for name, value in per_site.items() if name.startswith("layer1.0.")]
    assert len(layer1) >= 2 and blocks["layer1.0"] == pytest.approx(sum(layer1) / len(layer1))  # the mean
    assert map_profile(net, trace, {"stem": 0.9}, "block", "global") == {
        "global": pytest.approx((0.9 + 1.0 * (len(sites) - 1)) / len(sites))  # units not given stay ReLU
    }
    block = {"stem": 0.7, "layer1.0": 0.8, "layer2.0": 0.9, "layer3.0": 1.0}  # a stage holds whole blocks
    assert map_profile(net, trace, block, "block", "stage") == {
        "stem": 0.7,
        "layer1": 0.8,
        "layer2": 0.9,
        "layer3": 1.0,
    }
