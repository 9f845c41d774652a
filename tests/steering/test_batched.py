"""Batched trials: K profiles in one forward pass equal K separate steered passes."""

from __future__ import annotations

import ct_tune
from ct_tune.objectives import AccuracyObjective, AdversarialObjective, Evaluator, ProbeObjective
from ct_tune.objectives._probe import FeatureTap
from ct_tune.steering import _fused
from ct_tune.steering._batched import split, stack

import pytest
import torch
import torchvision.models as tvm

from tests.helpers import TRICKY_SITES, Tricky, digits_data, digits_target


def separate(model, x, profiles, cs, **steer_kwargs):
    outputs = []
    with ct_tune.steer(model, 1.0, **steer_kwargs) as handle:
        for profile, c in zip(profiles, cs, strict=True):
            handle.update(profile, c=c)
            outputs.append(model(x))
    return torch.stack(outputs)


@pytest.mark.parametrize("fused", [False, True])
def test_user_model_with_inline_and_reused_relus(fused):
    torch.manual_seed(0)
    model, x = Tricky().eval(), torch.randn(4, 8)
    profiles = [{site: 0.6 + 0.05 * i for i, site in enumerate(TRICKY_SITES)}, 0.8, {"relu#1": 0.7}]
    cs = [0.5, 0.2, 0.9]
    expected = separate(model, x, profiles, cs, granularity="site", example_input=x)
    _fused.set_fused(fused)
    try:
        with ct_tune.steer(model, 1.0, granularity="site", example_input=x) as handle:
            handle.update_batched(profiles, c=cs)
            assert handle.profiles == 3
            got = split(model(stack(x, 3)), 3)
            handle.update(0.8, c=0.2)  # back to one profile
            assert handle.profiles == 1
            torch.testing.assert_close(model(x), expected[1])
    finally:
        _fused.set_fused(None)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_resnet_blocks_eval_mode_batchnorm():
    torch.manual_seed(0)
    model = tvm.resnet18(num_classes=10).eval()
    x = torch.rand(2, 3, 32, 32)
    units = ct_tune.units(model, x, "block")
    profiles = [{unit: 0.75 + 0.02 * i for i, unit in enumerate(units)}, 1.0, {"layer3.1": 0.8}, 0.9]
    expected = separate(model, x, profiles, [0.5] * 4, granularity="block", example_input=x)
    with torch.no_grad(), ct_tune.steer(model, 1.0, granularity="block", example_input=x) as handle:
        handle.update_batched(profiles)
        got = split(model(stack(x, 4)), 4)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_global_steering_without_trace():
    torch.manual_seed(0)
    model, x = Tricky().eval(), torch.randn(3, 8)
    expected = separate(model, x, [0.7, 0.95], [0.5, 0.5])
    with ct_tune.steer(model, 0.9) as handle:
        handle.update_batched([0.7, 0.95])
        got = split(model(stack(x, 2)), 2)
    torch.testing.assert_close(got, expected)


def test_batch_not_a_multiple_and_bad_arguments_are_one_line_errors():
    model, x = Tricky().eval(), torch.randn(3, 8)
    with ct_tune.steer(model, 1.0, granularity="site", example_input=x) as handle:
        handle.update_batched([0.9, 0.8])
        with pytest.raises(ValueError, match="2 profiles needs a batch of 2 stacked copies"):
            model(x)
        with pytest.raises(ValueError, match="profiles"):
            handle.update_batched([])
        with pytest.raises(ValueError, match="c gives 3 values for 2 profiles"):
            handle.update_batched([0.9, 0.8], c=[0.5, 0.5, 0.5])
        with pytest.raises(ValueError, match="in"):
            handle.update_batched([0.9, 1.5])
        with pytest.raises(ValueError, match="2 profiles at once"):
            handle.profile()


def test_evaluator_scores_k_profiles_like_k_single_trials():
    target, data = digits_target(batch_size=256), digits_data()
    evaluator = Evaluator(target, data, [AccuracyObjective(), ProbeObjective(max_iter=30)])
    profiles = [({"relu#0": 0.7, "relu#1": 0.9}, 0.5), ({"relu#0": 1.0, "relu#1": 0.8}, 0.3), ({}, 0.5)]
    x = data.val_x[:2]
    with ct_tune.steer(target.net, 1.0, granularity="site", example_input=x) as handle:
        single = []
        for betas, c in profiles:
            handle.update(betas, c=c)
            single.append(evaluator.evaluate())
        tap = FeatureTap(target.net, "fc")
        separate_features = []
        for betas, c in profiles:
            handle.update(betas, c=c)
            separate_features.append(tap.features(target, data.val_x[:50]))
        handle.update_batched([betas for betas, _ in profiles], c=[c for _, c in profiles])
        batched_features = split(tap.features(target, stack(data.val_x[:50], 3)), 3)
        batched = evaluator.evaluate_profiles(handle, profiles)
    torch.testing.assert_close(batched_features, torch.stack(separate_features), rtol=1e-5, atol=1e-5)
    assert len(batched) == 3
    for one, many in zip(single, batched, strict=True):
        assert list(many) == ["accuracy", "probe"]
        assert many["accuracy"].value == one["accuracy"].value
        assert many["accuracy"].details["per_class"] == one["accuracy"].details["per_class"]
        assert abs(many["probe"].value - one["probe"].value) <= 2 / len(data.val_y)  # L-BFGS on equal-ish features


def test_adversarial_runs_one_profile_at_a_time():
    target, data = digits_target(), digits_data(with_train=False)
    evaluator = Evaluator(target, data, [AccuracyObjective(), AdversarialObjective(eps=0.05, steps=3, n=60)])
    profiles = [({}, 0.5), ({"relu#0": 0.8}, 0.5)]
    with ct_tune.steer(target.net, 1.0, granularity="site", example_input=data.val_x[:2]) as handle:
        single = []
        for betas, c in profiles:
            handle.update(betas, c=c)
            single.append(evaluator.evaluate())
        batched = evaluator.evaluate_profiles(handle, profiles)
    for one, many in zip(single, batched, strict=True):
        assert many["adversarial"].value == one["adversarial"].value
        assert many["accuracy"].value == one["accuracy"].value
