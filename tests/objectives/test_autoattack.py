"""AutoAttack as the original defines its standard version: what ct-tune builds by default, that it is at
least as strong as PGD-10 on the same samples, its settings and their one-line errors."""

from __future__ import annotations

import ct_tune
from ct_tune.objectives import AdversarialObjective, make_objective
from ct_tune.objectives._adversarial import STANDARD_AUTOATTACK
from ct_tune.search import spec_from_dict

import pytest
import torch
import torchattacks

from tests.helpers import digits_data, digits_target

EPS = 0.08  # on these digits PGD-10 leaves about half the samples robust: neither trivial nor hopeless


def test_the_default_autoattack_is_the_original_standard_version():
    target = digits_target()
    objective = AdversarialObjective(attack="autoattack")
    assert objective.standard and (objective.steps, objective.restarts) == (100, 1)
    built = dict(objective.build_autoattack(target))
    assert list(built) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    apgd, apgd_t, fab_t, square = built.values()
    assert type(apgd) is torchattacks.APGD and (apgd.loss, apgd.steps, apgd.n_restarts) == ("ce", 100, 1)
    assert type(apgd_t) is torchattacks.APGDT and (apgd_t.steps, apgd_t.n_restarts, apgd_t.n_target_classes) == (
        100,
        1,
        9,
    )
    assert type(fab_t) is torchattacks.FAB and fab_t.multi_targeted
    assert (fab_t.steps, fab_t.n_restarts, fab_t.n_target_classes) == (100, 1, 9)
    assert type(square) is torchattacks.Square
    assert (square.n_queries, square.n_restarts, square.p_init, square.loss, square.rescale_schedule) == (
        5000,
        1,
        0.8,
        "margin",
        False,
    )
    for attack in built.values():
        assert (attack.eps, attack.norm, attack.seed) == (objective.eps, "Linf", 0)
    assert objective.version == (
        "autoattack-standard (apgd-ce, apgd-t, fab-t, square; 100 steps, 1 restart(s), 5000 queries, "
        f"9 target classes) torchattacks {torchattacks.__version__}"
    )
    # What ct-tune no longer calls: torchattacks 3.3's own "standard" runs its gradient attacks 10 steps.
    own = torchattacks.AutoAttack(built["apgd-ce"].model, eps=objective.eps, n_classes=10, seed=0)
    assert [a.steps for a in own._autoattack.attacks[:3]] == [10, 10, 10]


def test_a_spec_writes_out_the_standard_settings_and_names_a_custom_one():
    base = {"model": {"name": "cifar_resnet_small"}, "data": {"name": "digits"}}
    spec = spec_from_dict({**base, "objectives": [{"name": "adversarial", "attack": "autoattack", "norm": "l2"}]})
    written = spec.to_dict()["objectives"][0]
    assert {key: written[key] for key in STANDARD_AUTOATTACK} == {
        "attacks": ["apgd-ce", "apgd-t", "fab-t", "square"],
        "steps": 100,
        "restarts": 1,
        "n_queries": 5000,
        "n_target_classes": 9,
    }
    pgd = spec_from_dict({**base, "objectives": [{"name": "adversarial"}]}).objectives[0]
    assert pgd.steps == 10 and pgd.attacks is None
    custom = make_objective("adversarial", attack="autoattack", attacks=["apgd-ce", "square"], n_queries=100)
    assert not custom.standard and custom.version.startswith("autoattack-custom (apgd-ce, square; 100 steps")
    fewer = make_objective("adversarial", attack="autoattack", n_target_classes=3)
    assert dict(fewer.build_autoattack(digits_target()))["apgd-t"].n_target_classes == 3


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"attacks": ["apgd-ce"]}, "attacks is an AutoAttack setting; set attack: autoattack or remove it"),
        ({"n_queries": 10}, "n_queries is an AutoAttack setting"),
        ({"attack": "autoattack", "step_size": 0.01}, "step_size is a PGD setting"),
        ({"attack": "autoattack", "random_start": False}, "random_start is a PGD setting"),
        ({"attack": "autoattack", "attacks": ["apgd-ce", "pgd"]}, "attacks.1: got 'pgd'; input should be 'apgd-ce'"),
        ({"attack": "autoattack", "attacks": ["square", "square"]}, "lists an attack twice"),
        ({"attack": "autoattack", "attacks": []}, "attacks: got \\[\\]; tuple should have at least 1 item"),
        (
            {"attack": "autoattack", "n_target_classes": 0},
            "n_target_classes: got 0; input should be greater than or equal to 1",
        ),
    ],
)
def test_bad_settings_are_one_line_errors(settings, message):
    with pytest.raises(ct_tune.InputError, match=message) as error:
        make_objective("adversarial", **settings)
    assert "\n" not in str(error.value)
    spec = {"model": {"name": "cifar_resnet_small"}, "objectives": [{"name": "adversarial", **settings}]}
    with pytest.raises(ct_tune.InputError) as error:  # the spec says it too, naming the objective
        spec_from_dict(spec)
    assert "objectives.0" in str(error.value) and "\n" not in str(error.value)


def test_too_few_classes_for_a_targeted_attack_is_one_line():
    target = digits_target()
    target.num_classes = 3
    with pytest.raises(ct_tune.InputError, match="apgd-t needs at least 4 classes; this model has 3"):
        AdversarialObjective(attack="autoattack").build_autoattack(target)


def test_apgd_at_the_standard_100_steps_is_at_least_as_strong_as_pgd10_and_leaves_torch_seeded():
    target, data = digits_target(), digits_data(with_train=False)
    pgd = AdversarialObjective(eps=EPS, steps=10, n=64).evaluate(target, data)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    aa = AdversarialObjective(eps=EPS, n=64, attack="autoattack", attacks=["apgd-ce"]).evaluate(target, data)
    assert torch.equal(torch.rand(3), expected)  # torchattacks reseeds the global generator: not ours
    assert aa.details["clean_accuracy"] == pgd.details["clean_accuracy"]  # the same samples
    assert 0.2 < pgd.value < 0.8
    assert aa.value <= pgd.value, (aa.value, pgd.value)
    fooled = round((aa.details["clean_accuracy"] - aa.value) * 64)
    assert aa.details["fooled_by"] == {"apgd-ce": fooled}


@pytest.mark.slow
def test_standard_autoattack_is_at_least_as_strong_as_pgd10_on_the_same_samples():
    """The whole standard version, nothing reduced, on 24 val digits (about 20 s on one core)."""
    target, data = digits_target(), digits_data(with_train=False)
    pgd = AdversarialObjective(eps=EPS, steps=10, n=24).evaluate(target, data)
    aa = AdversarialObjective(eps=EPS, n=24, attack="autoattack").evaluate(target, data)
    assert aa.details["attack_version"].startswith("autoattack-standard")
    assert aa.details["clean_accuracy"] == pgd.details["clean_accuracy"]
    assert 0.2 < pgd.value < 0.8
    assert aa.value <= pgd.value, (aa.value, pgd.value)
    assert list(aa.details["fooled_by"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert sum(aa.details["fooled_by"].values()) == round((aa.details["clean_accuracy"] - aa.value) * 24)
