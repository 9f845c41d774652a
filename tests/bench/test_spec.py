"""The bench spec: what a process loads to score profiles, without a search section; a study spec extends it,
and a bench opened from either groups the same sites into the same units."""

from __future__ import annotations

from ct_tune import InputError
from ct_tune._specs import validated
from ct_tune.bench import Bench, BenchSpec, bench_spec
from ct_tune.objectives import AccuracyObjective, ProbeObjective
from ct_tune.search import StudySpec, spec_from_dict

import pytest

MODEL = {"name": "cifar_resnet_small"}


def test_a_bench_spec_has_no_search_and_a_study_spec_is_one():
    spec = bench_spec(model=MODEL, objectives=["probe", {"name": "accuracy", "top_k": 3}], run={"device": "cpu"})
    assert spec.objectives == [ProbeObjective(), AccuracyObjective(top_k=3)]  # the objectives are their own specs
    assert spec.data.name == "digits" and spec.run.device == "cpu" and spec.objective_names == ["probe", "accuracy"]
    study = spec_from_dict({"model": MODEL, "objectives": ["probe"], "search": {"granularity": "stage"}})
    assert isinstance(study, BenchSpec) and isinstance(study, StudySpec)
    assert study.grouping == {"granularity": "stage", "groups": None}
    with pytest.raises(InputError, match=r"^arguments: unknown field 'search'"):  # a bench searches nothing
        validated(BenchSpec, {"model": MODEL, "search": {"granularity": "block"}}, source="arguments")


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"objectives": ["robustness"]}, "objectives.0.name: got 'robustness'"),
        ({"objectives": ["accuracy", "accuracy"]}, "each objective may appear once"),
        ({"objectives": [{"name": "adversarial", "eps": "8/0"}]}, "objectives.0.eps: got '8/0'"),
        ({"run": {"device": "gpu"}}, "run.device: got 'gpu'"),
        ({"data": {"name": "digits", "batch_keys": {"input": "x", "target": "y"}}}, "data.batch_keys is for your own"),
    ],
)
def test_bad_sections_are_one_line_naming_the_field(sections, message):
    with pytest.raises(InputError) as error:
        bench_spec(model=MODEL, **sections)
    text = str(error.value)
    assert "\n" not in text and text.startswith("arguments: ") and message in text, text


def test_a_bench_opened_from_either_spec_has_the_same_units():
    study = spec_from_dict({"model": MODEL, "search": {"granularity": "stage"}, "run": {"device": "cpu"}})
    with Bench.open(study, **study.grouping, steer=False) as from_study:
        units, fingerprint = from_study.units, from_study.trace.fingerprint
    plain = bench_spec(model=MODEL, run={"device": "cpu"})
    with Bench.open(plain, granularity="stage", steer=False) as from_bench:
        assert from_bench.units == units and from_bench.trace.fingerprint == fingerprint
    with Bench.open(plain, steer=False) as global_bench:  # global unless told otherwise
        assert global_bench.units == ["global"]
