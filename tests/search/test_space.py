"""The search space: one ``beta.<unit>`` parameter per unit in network order (plus ``c``), suggested on a real
Optuna trial; the trials enqueued at creation; profiles read back from params."""

from __future__ import annotations

from ct_tune import InputError
from ct_tune.search import spec_from_dict
from ct_tune.search._space import (
    check_units,
    distributions,
    initial_trials,
    param_names,
    profile_from_params,
    profile_params,
    suggest,
    uniform_params,
)

import optuna
import pytest
from optuna.distributions import FloatDistribution

UNITS = ["stem", "layer1.0", "layer1.1", "layer2.0"]


def spec(**search):
    return spec_from_dict({"model": {"checkpoint": "c.pt"}, "search": search, "budget": {"n_trials": 40}})


def test_param_names_follow_the_units():
    assert param_names(spec(), UNITS) == ["beta.stem", "beta.layer1.0", "beta.layer1.1", "beta.layer2.0"]
    assert param_names(spec(c={"low": 0.2, "high": 0.8}), UNITS)[-1] == "c"
    assert param_names(spec(), []) == []


def test_distributions_with_ranges_steps_logs_and_c():
    space = distributions(
        spec(
            beta={"low": 0.5, "high": 1.0, "step": 0.05},
            ranges={"layer1.1": {"low": 0.9, "high": 1.0}},
            c={"low": 0.0, "high": 1.0},
        ),
        UNITS,
    )
    assert list(space) == [*(f"beta.{u}" for u in UNITS), "c"]
    assert space["beta.stem"] == FloatDistribution(0.5, 1.0, step=0.05)
    assert space["beta.layer1.1"] == FloatDistribution(0.9, 1.0)  # its own range (no step)
    assert space["c"] == FloatDistribution(0.0, 1.0)
    logged = distributions(spec(beta={"low": 0.1, "high": 1.0, "log": True}), ["stem"])
    assert logged == {"beta.stem": FloatDistribution(0.1, 1.0, log=True)}


def test_suggest_on_a_real_trial_in_network_order():
    searched = spec(
        beta={"low": 0.6, "high": 1.0}, ranges={"stem": {"low": 0.95, "high": 1.0}}, c={"low": 0.3, "high": 0.4}
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        trial = study.ask()
        betas, c = suggest(trial, searched, UNITS)
        assert list(betas) == UNITS and list(trial.params) == param_names(searched, UNITS)
        assert 0.95 <= betas["stem"] <= 1.0 and all(0.6 <= betas[u] <= 1.0 for u in UNITS[1:])
        assert 0.3 <= c <= 0.4 and trial.params["c"] == c
        assert trial.distributions == distributions(searched, UNITS)
        study.tell(trial, 0.0)
        assert profile_from_params(study.trials[-1].params, searched, UNITS) == (betas, c)
    fixed = spec()
    trial = study.ask()
    betas, c = suggest(trial, fixed, ["stem"])
    assert c == 0.5 and "c" not in trial.params


def test_enqueued_params_are_what_suggest_returns():
    searched = spec(c={"low": 0.0, "high": 1.0}, enqueue_paper_grid=True)
    study = optuna.create_study()
    for params, _kind in initial_trials(searched, UNITS)[:3]:
        study.enqueue_trial(params)
    for expected in (1.0, 0.7, 0.71):
        betas, c = suggest(study.ask(), searched, UNITS)
        assert betas == dict.fromkeys(UNITS, expected) and c == 0.5


def test_initial_trials():
    assert initial_trials(spec(), ["stem", "layer1"]) == [({"beta.stem": 1.0, "beta.layer1": 1.0}, "baseline")]
    assert initial_trials(spec(enqueue_baseline=False), UNITS) == []
    grid = initial_trials(spec(enqueue_paper_grid=True), ["stem"])
    assert [kind for _, kind in grid] == ["baseline"] + ["paper-grid"] * 30
    assert [params["beta.stem"] for params, _ in grid[1:]] == [round(0.7 + 0.01 * i, 2) for i in range(30)]
    with_c = initial_trials(spec(c={"low": 0.6, "high": 0.9}), ["stem"])
    assert with_c == [({"beta.stem": 1.0, "c": 0.6}, "baseline")]  # 0.5 is outside c's range: its low end
    assert uniform_params(0.8, spec(c={"low": 0.0, "high": 1.0}), ["a"]) == {"beta.a": 0.8, "c": 0.5}


def test_profile_from_params():
    assert profile_from_params({"beta.stem": 0.8}, spec(), ["stem", "layer1"]) == ({"stem": 0.8, "layer1": 1.0}, 0.5)
    searched = spec(c={"low": 0.0, "high": 1.0})
    assert profile_from_params({"beta.stem": 0.8, "c": 0.25}, searched, ["stem"]) == ({"stem": 0.8}, 0.25)
    assert profile_from_params({}, searched, ["stem"]) == ({"stem": 1.0}, 0.5)
    assert profile_from_params({"c": 0.9}, spec(c=0.1), ["stem"]) == ({"stem": 1.0}, 0.1)  # a fixed c wins


def test_check_units():
    check_units(spec(ranges={"stem": {"low": 0.8, "high": 1.0}}), UNITS)
    with pytest.raises(InputError) as error:
        check_units(spec(ranges={"layer9": {"low": 0.8, "high": 1.0}, "stem": {"low": 0.8, "high": 1.0}}), UNITS)
    text = str(error.value)
    assert "\n" not in text and "search.ranges names unknown unit(s)" in text and "layer9" in text
    assert "for granularity 'block'" in text and "valid units:" in text and "layer2.0" in text


def test_profile_params_are_clipped_into_the_unit_ranges():
    """What a warm-started stage enqueues: an earlier profile, each beta inside its unit's range."""
    spec = spec_from_dict(
        {
            "model": {"checkpoint": "c.pt"},
            "search": {
                "beta": {"low": 0.7, "high": 1.0},
                "ranges": {"stem": {"low": 0.85, "high": 0.95}},
                "enqueue_baseline": False,
            },
        }
    )
    profiles = [{"stem": 0.99, "layer1": 0.5}, {"stem": 0.8, "layer1": 0.9}]
    assert [profile_params(spec, profile, c=0.3) for profile in profiles] == [
        {"beta.stem": 0.95, "beta.layer1": 0.7},
        {"beta.stem": 0.85, "beta.layer1": 0.9},
    ]  # c is fixed by the spec: not a parameter
    searched = spec_from_dict(
        {"model": {"checkpoint": "c.pt"}, "search": {"c": {"low": 0.0, "high": 1.0}, "enqueue_baseline": False}}
    )
    assert profile_params(searched, {"global": 0.8}, c=0.3) == {"beta.global": 0.8, "c": 0.3}
