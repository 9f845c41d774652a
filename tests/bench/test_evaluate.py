"""Scoring one profile outside a study (``evaluate_profile``) and listing a model's units (``model_units``):
what they load is what a study with the same sections loads."""

from __future__ import annotations

from ct_tune import BetaProfile, InputError
from ct_tune.bench import evaluate_profile, model_units
from ct_tune.steering import GRANULARITIES

import pytest

from tests._fresh import tiny_study

pytestmark = pytest.mark.slow

DATA = {"name": "digits", "seed": 0}


def model(checkpoint) -> dict:
    return {"checkpoint": str(checkpoint)}


def test_model_units_at_every_granularity(digits_checkpoint):
    units = model_units(model=model(digits_checkpoint), data=DATA, granularity="block")
    assert units["units"] == ["stem", "layer1.0", "layer2.0", "layer3.0"] and units["granularity"] == "block"
    assert set(units["counts"]) == set(GRANULARITIES) and units["counts"]["global"] == 1
    assert units["counts"]["block"] == 4 and units["counts"]["site"] >= units["counts"]["block"]
    sites = [site for unit_sites in units["sites"].values() for site in unit_sites]
    assert len(sites) == units["counts"]["site"] and len(set(sites)) == len(sites)  # each site in one unit
    per_site = model_units(model=model(digits_checkpoint), data=DATA, granularity="site")
    assert per_site["units"] == sites and per_site["fingerprint"] == units["fingerprint"]
    with pytest.raises(InputError, match=r"unknown granularity 'layer'; choose one of: global, stage, block, site"):
        model_units(model=model(digits_checkpoint), data=DATA, granularity="layer")


def test_evaluate_profile_scores_what_a_trial_scores(tmp_path, digits_checkpoint):
    study = tiny_study(tmp_path, digits_checkpoint, budget={"n_trials": 2})
    study.run(progress=False)
    baseline, other = sorted(study.optuna_study.trials, key=lambda t: t.number)
    relu = evaluate_profile(model=model(digits_checkpoint), data=DATA, beta=1.0)
    assert relu["split"] == "val" and relu["granularity"] == "global" and relu["c"] == 0.5
    assert relu["results"]["accuracy"]["value"] == pytest.approx(baseline.value)
    assert set(relu["results"]["accuracy"]) >= {"value", "seconds", "per_class"}
    betas = study.trial(other.number).betas
    steered = evaluate_profile(model=model(digits_checkpoint), data=DATA, beta=betas, granularity="block")
    assert steered["betas"] == pytest.approx(betas)
    assert steered["results"]["accuracy"]["value"] == pytest.approx(other.value)
    exported = study.export(trial=other.number)
    again = evaluate_profile(model=model(digits_checkpoint), data=DATA, profile=exported, objectives=["accuracy"])
    assert again["results"]["accuracy"]["value"] == pytest.approx(other.value) and again["granularity"] == "block"


def test_evaluate_profile_errors(digits_checkpoint):
    with pytest.raises(InputError, match="give exactly one of beta or profile"):
        evaluate_profile(model=model(digits_checkpoint), data=DATA)
    profile = BetaProfile(granularity="global", betas={"global": 0.9})
    with pytest.raises(InputError, match="give exactly one of beta or profile"):
        evaluate_profile(model=model(digits_checkpoint), data=DATA, beta=0.9, profile=profile)
    foreign = BetaProfile(granularity="global", betas={"global": 0.9}, fingerprint="0123456789abcdef", model="VGG")
    with pytest.raises(InputError, match=r"found on a model with other ReLU calls \(VGG\)"):
        evaluate_profile(model=model(digits_checkpoint), data=DATA, profile=foreign)
    with pytest.raises(InputError, match=r"arguments: unknown field 'objectives\.0\.top_kk'"):
        evaluate_profile(
            model=model(digits_checkpoint), data=DATA, beta=0.9, objectives=[{"name": "accuracy", "top_kk": 1}]
        )
