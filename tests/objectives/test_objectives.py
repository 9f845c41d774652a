"""Objectives: hand-counted accuracy, PGD properties and an independent PGD, the probe vs scikit-learn."""

from __future__ import annotations

import logging

import ct_tune
from ct_tune.objectives import (
    AccuracyObjective,
    AdversarialObjective,
    EvalData,
    EvalTarget,
    Evaluator,
    ProbeObjective,
    fixed_subset,
    make_objective,
    pgd_attack,
)
from ct_tune.objectives._probe import FeatureTap, fit_linear_probe

import numpy as np
import pytest
import torch
import torchattacks
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

from tests.helpers import digits_data, digits_target, normalize, trained_digits_cnn


# --------------------------------------------------------------------------------------------------
# accuracy
def test_accuracy_equals_a_hand_count():
    # A linear "model" that predicts class argmax(x): logits are the inputs themselves.
    net = nn.Linear(6, 6, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.eye(6))
    x = torch.tensor(
        [
            [9, 1, 0, 0, 0, 0],  # predicts 0, top-5 misses only class 5... (ties broken by value)
            [0, 9, 8, 0, 0, 0],  # predicts 1
            [0, 8, 9, 0, 0, 0],  # predicts 2
            [1, 2, 3, 4, 5, 9],  # predicts 5
            [9, 8, 7, 6, 5, 0],  # predicts 0; class 5 is ranked last, outside the top 5
        ],
        dtype=torch.float32,
    )
    y = torch.tensor([0, 2, 2, 4, 5])
    # top-1 hits: sample 0 (0), 2 (2) -> 2/5. top-5 misses only sample 4 (class 5 ranked 6th) -> 4/5.
    target = EvalTarget(net, lambda t: t, num_classes=6, batch_size=2)
    result = AccuracyObjective().evaluate(target, EvalData(x, y))
    assert result.value == pytest.approx(2 / 5)
    assert result.details["top5"] == pytest.approx(4 / 5)
    assert result.details["per_class"] == [1.0, None, 0.5, None, 0.0, 0.0]
    assert result.details["n"] == 5


def test_no_top5_with_five_classes_or_fewer():
    net = nn.Linear(3, 3)
    result = AccuracyObjective().evaluate(
        EvalTarget(net, lambda t: t, 3), EvalData(torch.rand(4, 3), torch.zeros(4, dtype=torch.long))
    )
    assert not any(key.startswith("top5") for key in result.details)


def test_reduced_precision_on_a_cpu_is_said_once_not_silent():
    from ct_tune.objectives import _base

    _base._say_full_precision.cache_clear()  # said once per process: start this test's process afresh
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger(_base.__name__).addHandler(handler)
    try:
        net, x = nn.Linear(3, 3), torch.rand(4, 3)
        target = EvalTarget(net, lambda t: t, 3, precision="fp16")
        for _ in range(3):
            assert target.logits(x).dtype == torch.float32
        assert torch.equal(target.logits(x), EvalTarget(net, lambda t: t, 3).logits(x))  # fp32 indeed
    finally:
        logging.getLogger(_base.__name__).removeHandler(handler)
    assert said == ["run.precision fp16 applies on CUDA only: scoring on cpu in fp32"]


def test_chunked_reports_running_values_and_ends_at_the_final_value():
    reports: list[tuple[float, int]] = []
    result = AccuracyObjective().evaluate(
        digits_target(batch_size=100), digits_data(), lambda v, n: reports.append((v, n))
    )
    assert [n for _, n in reports] == [100, 200, 300, 400, 500, 597]
    assert reports[-1][0] == pytest.approx(result.value)


# --------------------------------------------------------------------------------------------------
# PGD
@pytest.fixture(scope="module")
def val() -> tuple[torch.Tensor, torch.Tensor]:
    data = digits_data()
    return data.val_x, data.val_y


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_eps_zero_gives_clean_accuracy(norm):
    target, data = digits_target(), digits_data()
    clean = AccuracyObjective().evaluate(target, data).value
    robust = AdversarialObjective(norm=norm, eps=0.0, n=10_000).evaluate(target, data)
    assert robust.value == pytest.approx(clean)
    assert robust.details["clean_accuracy"] == pytest.approx(clean)


@pytest.mark.parametrize(("norm", "eps_values"), [("linf", [0, 0.02, 0.05, 0.1, 0.2]), ("l2", [0, 0.1, 0.3, 0.6, 1.2])])
def test_accuracy_does_not_increase_with_eps(norm, eps_values):
    target, data = digits_target(), digits_data()
    values = [AdversarialObjective(norm=norm, eps=e, steps=10, n=300).evaluate(target, data).value for e in eps_values]
    assert values == sorted(values, reverse=True), values
    assert values[-1] < values[0] - 0.3, values  # a real attack, not a no-op


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 0.5)])
def test_adversarial_examples_stay_in_the_ball_and_pixel_range(norm, eps, val):
    x, y = val[0][:200], val[1][:200]
    x_adv, robust = pgd_attack(
        digits_target(),
        x,
        y,
        norm=norm,
        eps=eps,
        steps=10,
        step_size=2.5 * eps / 10,
        random_start=True,
        restarts=2,
        generator=torch.Generator().manual_seed(0),
    )
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps * (1 + 1e-5) + 1e-7).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (~robust).sum() > 0
    with torch.no_grad():  # every sample reported as fooled is misclassified at its x_adv
        fooled_preds = digits_target().logits(x_adv[~robust]).argmax(1)
    assert (fooled_preds != y[~robust]).all()


def test_attack_differentiates_through_the_steered_model(val):
    """One signed-gradient step from x must follow the gradient of the *steered* network."""
    target = digits_target()
    x, y = val[0][:64], val[1][:64]
    correct = target.logits(x).argmax(1) == y
    x, y = x[correct], y[correct]
    eps = 0.05
    with ct_tune.steer(target.net, 0.6):
        xg = x.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(target.logits(xg), y, reduction="sum").backward()
        expected = (x + eps * xg.grad.sign()).clamp(0, 1)
        x_adv, robust = pgd_attack(
            target,
            x,
            y,
            norm="linf",
            eps=eps,
            steps=1,
            step_size=eps,
            random_start=False,
            restarts=1,
            generator=torch.Generator().manual_seed(0),
        )
    survivors = robust.nonzero().squeeze(1)  # their x_adv is the single step's iterate
    assert len(survivors) > 10
    torch.testing.assert_close(x_adv[survivors], expected[survivors])
    xg_plain = x.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(target.logits(xg_plain), y, reduction="sum").backward()
    assert not torch.equal(xg_plain.grad.sign(), xg.grad.sign())  # ReLU gradients would differ


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.08), ("l2", 0.4)])
def test_agrees_with_torchattacks_pgd(norm, eps):
    target, data = digits_target(), digits_data()
    steps = 10
    ours = AdversarialObjective(norm=norm, eps=eps, steps=steps, n=597, seed=0).evaluate(target, data).value

    class Pixel(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = trained_digits_cnn()

        def forward(self, t):
            return self.net(normalize(t))

    model = Pixel().eval()
    torch.manual_seed(0)
    cls = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
    attack = cls(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)
    x_adv = attack(data.val_x, data.val_y)
    with torch.no_grad():
        theirs = float((model(x_adv).argmax(1) == data.val_y).float().mean())
    assert 0.05 < theirs < 0.95  # the setting is neither trivial nor hopeless
    assert abs(ours - theirs) <= 0.04, (ours, theirs)
    assert ours <= theirs + 0.01  # ours also counts intermediate iterates: never weaker


def test_fixed_subset_is_seeded_and_stratified(val):
    y = val[1]
    a, b, c = fixed_subset(y, 200, 0), fixed_subset(y, 200, 0), fixed_subset(y, 200, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(set(a.tolist())) == 200
    counts = torch.bincount(y[a], minlength=10).float()
    expected = torch.bincount(y, minlength=10).float() * 200 / len(y)
    assert (counts - expected).abs().max() <= 1.0


# --------------------------------------------------------------------------------------------------
# probe
def test_probe_reaches_100_percent_on_linearly_separable_features():
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=generator) * 5
    labels = torch.arange(400) % 4
    x = centers[labels] + 0.1 * torch.randn(400, 16, generator=generator)
    net = nn.Sequential(nn.Identity(), nn.Linear(16, 4))  # the probe reads the input of the Linear
    target = EvalTarget(net, lambda t: t, num_classes=4)
    result = ProbeObjective().evaluate(target, EvalData(x[300:], labels[300:], x[:300], labels[:300]))
    assert result.value == 1.0
    assert result.details["feature_layer"] == "1"
    assert result.details["feature_dim"] == 16


def test_probe_matches_scikit_learn_logistic_regression_on_digits_features():
    target, data = digits_target(), digits_data()
    objective = ProbeObjective(l2=1e-3, max_iter=200)
    ours = objective.evaluate(target, data).value

    features = {}
    handle = target.net.fc.register_forward_pre_hook(lambda m, a: features.setdefault("f", a[0]))
    with torch.no_grad():
        target.logits(data.train_x)
        train_f = features.pop("f").numpy()
        target.logits(data.val_x)
        val_f = features.pop("f").numpy()
    handle.remove()
    scaler = StandardScaler().fit(train_f)
    # sklearn minimises 0.5|w|^2 + C * sum(CE); ours mean(CE) + l2/2 |w|^2, i.e. C = 1 / (l2 * N).
    clf = LogisticRegression(C=1 / (objective.l2 * len(train_f)), max_iter=5000)
    clf.fit(scaler.transform(train_f), data.train_y.numpy())
    theirs = float(np.mean(clf.predict(scaler.transform(val_f)) == data.val_y.numpy()))
    assert abs(ours - theirs) <= 0.02, (ours, theirs)
    assert ours > 0.9


def test_probe_fit_does_not_move_with_float_noise_in_its_features():
    """A thread count or CPU changes the features' last bits; the fit runs to its optimum, so the
    predictions stay (the early-stopped float32 fit moved the quickstart's baseline by 0.2 points)."""
    target, data = digits_target(), digits_data()
    tap = FeatureTap(target.net, "fc")
    train, val = (ProbeObjective._features(target, tap, x) for x in (data.train_x, data.val_x))
    probe = fit_linear_probe(train, data.train_y, 10, l2=1e-3, max_iter=300)
    assert probe.weight.dtype == torch.float64 and probe.iterations < 300  # converged, not cut off
    predictions = probe.logits(val).argmax(1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        noisy = train * (1 + 1e-6 * torch.randn(train.shape, generator=generator))
        again = fit_linear_probe(noisy, data.train_y, 10, l2=1e-3, max_iter=300)
        assert torch.equal(again.logits(val).argmax(1), predictions)


def test_probe_with_an_explicit_feature_layer_and_bad_layers():
    target, data = digits_target(), digits_data()
    result = ProbeObjective(feature_layer="pool").evaluate(target, data)
    assert result.details["feature_dim"] == 16 * 8 * 8 * 2  # conv2 output (32 x 8 x 8), the pool's input
    with pytest.raises(ValueError, match="not a module"):
        ProbeObjective(feature_layer="nope").evaluate(target, data)
    with pytest.raises(ValueError, match="needs the train split"):
        ProbeObjective().evaluate(target, digits_data(with_train=False))


# --------------------------------------------------------------------------------------------------
# beta = 1 and the evaluator
@pytest.mark.parametrize(
    "objective",
    [AccuracyObjective(), ProbeObjective(), AdversarialObjective(eps=0.05, steps=5, n=200)],
    ids=["accuracy", "probe", "adversarial"],
)
def test_beta_one_reproduces_the_unsteered_scores_exactly(objective):
    target, data = digits_target(), digits_data()
    plain = objective.evaluate(target, data)
    with ct_tune.steer(target.net, 1.0, granularity="site", example_input=data.val_x[:1]):
        steered = objective.evaluate(target, data)
    assert steered.value == plain.value
    assert steered.details["per_class"] == plain.details["per_class"]
    with ct_tune.steer(target.net, 0.5):
        changed = objective.evaluate(target, data)
    assert (changed.value, changed.details["per_class"]) != (plain.value, plain.details["per_class"])


def test_evaluator_runs_several_objectives_and_reports_only_for_one():
    target, data = digits_target(), digits_data()
    evaluator = Evaluator(target, data, [AccuracyObjective(), AdversarialObjective(eps=0.05, steps=3, n=100)])
    calls: list[int] = []
    results = evaluator.evaluate(lambda v, n: calls.append(n))
    assert list(results) == ["accuracy", "adversarial"]
    assert calls == []  # multi-objective: no pruning reports
    assert 0 < results["adversarial"].value < results["accuracy"].value
    assert all(r.compute_seconds <= r.seconds for r in results.values())


def test_make_objective_errors_are_one_line():
    with pytest.raises(ValueError, match="choose one of: accuracy, probe, adversarial"):
        make_objective("robustness")
    with pytest.raises(ValueError, match="has no setting 'epsilon'"):
        make_objective("adversarial", epsilon=0.1)
    with pytest.raises(ValueError, match="norm: got 'l1'; input should be 'linf' or 'l2'"):
        make_objective("adversarial", norm="l1")
    assert make_objective("adversarial", eps=0.1).eps == 0.1
