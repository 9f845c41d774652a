"""The CT families (ReLU, SiLU, GELU, GELU tanh): the documented formula, exactness at each family's own
activation and at beta = 1, steering of mixed networks, profiles and trained CT that know their family."""

from __future__ import annotations

import math

import ct_tune
from ct_tune import InputError
from ct_tune.steering import FAMILIES, BetaProfile, apply_profile, ct, family_named, steer, trace_sites
from ct_tune.trained import TrainCTSettings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

X = torch.linspace(-8, 8, 4001, dtype=torch.float64)


def documented(x: torch.Tensor, beta: float, c: float, family: str) -> torch.Tensor:
    """The README's formula, written out: c * gate(s * beta * x / m) * x + (1 - c) * softplus(x / m) * m."""
    m = 1.0 - beta
    if family in ("relu", "silu"):
        gate = torch.sigmoid(beta / m * x)
    else:
        z = beta / m * x / 1.702
        if family == "gelu":
            gate = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
        else:
            gate = 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))
    return c * gate * x + (1 - c) * F.softplus(x / m) * m


NATIVE = {
    "relu": torch.relu,
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_own_activation_is_the_networks_kernel_bit_for_bit(family):
    beta0 = family_named(family).baseline
    x = torch.randn(64, 32)
    assert torch.equal(ct(x, beta0, family=family), NATIVE[family](x))  # c defaults to the family's own
    if family != "relu":
        # the formula itself, not the kernel, reproduces the activation within float64 rounding
        torch.testing.assert_close(documented(X, beta0, 1.0, family), NATIVE[family](X), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("beta", [0.3, 0.55, 0.8, 0.97])
@pytest.mark.parametrize("c", [1.0, 0.4])
def test_the_formula_is_the_documented_one(family, beta, c):
    got = ct(X, beta, c, family=family)
    torch.testing.assert_close(got, documented(X, beta, c, family), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_beta_one_is_relu_with_finite_gradients(family):
    x = torch.tensor([-3.0, -1e-8, 0.0, 1e-8, 2.0], requires_grad=True)
    y = ct(x, 1.0, family=family)
    assert torch.equal(y, torch.relu(x))
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_smaller_beta_is_smoother_in_every_gated_family():
    # curvature at 0: the second difference of CT shrinks as beta falls, below and above beta0
    h = 1e-3
    for family in ("silu", "gelu", "gelu_tanh"):
        x = torch.tensor([-h, 0.0, h], dtype=torch.float64)
        curvature = [
            float(ct(x, b, family=family) @ torch.tensor([1.0, -2.0, 1.0], dtype=torch.float64))
            for b in (0.3, family_named(family).baseline, 0.9)
        ]
        assert curvature[0] < curvature[1] < curvature[2]


def test_unknown_family_is_one_line():
    with pytest.raises(InputError, match="unknown activation family 'swish'; known: relu, silu, gelu, gelu_tanh"):
        ct(torch.zeros(2), 0.9, family="swish")


class Mixed(nn.Module):
    """ReLU, SiLU, GELU (both forms) as modules and inline calls, some in place."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 6)
        self.c = nn.Linear(6, 3)
        self.relu = nn.ReLU(inplace=True)
        self.gelu = nn.GELU(approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.a(x))
        x = F.silu(self.b(x), inplace=True)
        x = self.gelu(x)
        return self.c(F.gelu(x))


def test_a_mixed_network_gets_a_unit_per_family_and_its_own_activation_back():
    model, x = Mixed().eval(), torch.randn(5, 6)
    assert ct_tune.units(model, x, "global") == ["global:relu", "global:silu", "global:gelu_tanh", "global:gelu"]
    plain = model(x)
    with steer(model, 1.0, granularity="global", example_input=x) as handle:
        assert handle.families == {
            "global:relu": "relu",
            "global:silu": "silu",
            "global:gelu_tanh": "gelu_tanh",
            "global:gelu": "gelu",
        }
        handle.update(handle.baselines)
        assert torch.equal(model(x), plain)
        handle.update(0.7)
        steered = model(x)
    assert not torch.equal(steered, plain)
    assert torch.equal(model(x), plain)  # removed: the plain network again


def test_site_names_say_the_function_of_an_inline_call():
    names = [site.name for site in trace_sites(Mixed(), torch.randn(2, 6)).sites]
    assert names == ["relu#0", "silu()#0", "gelu#0", "gelu()#0"]


def gelu_net(activation: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), activation, nn.Linear(8, 8), activation, nn.Linear(8, 2)).eval()


def test_a_profile_of_one_family_is_refused_on_another(tmp_path):
    x = torch.randn(3, 4)
    with steer(gelu_net(nn.GELU()), 0.6, granularity="site", example_input=x) as handle:
        profile = handle.profile()
    assert profile.families == {"1#0": "gelu", "1#1": "gelu"}  # one module, called twice
    path = profile.save(tmp_path / "gelu.json")
    assert BetaProfile.load(path).families == profile.families
    relu = gelu_net(nn.ReLU())
    with pytest.raises(InputError) as raised:
        apply_profile(relu, path, example_input=x, strict=False)
    assert "found on GELU and this Sequential applies ReLU there" in str(raised.value)
    assert "\n" not in str(raised.value)
    assert not hasattr(relu[1], "forward") or "forward" not in relu[1].__dict__  # nothing left attached
    with apply_profile(gelu_net(nn.GELU()), path, example_input=x) as handle:
        assert handle.betas == {"1#0": 0.6, "1#1": 0.6}


def test_a_relu_profile_is_written_as_before():
    x = torch.randn(3, 4)
    with steer(gelu_net(nn.ReLU()), 0.8, granularity="site", example_input=x) as handle:
        data = handle.profile().to_dict()
    assert "families" not in data and data["c"] == 0.5


def test_trained_ct_starts_each_unit_at_its_own_activation():
    settings = TrainCTSettings()
    assert settings.start(family_named("relu")) == (0.8, 0.5)  # the CT authors' start for ReLU
    assert settings.start(family_named("gelu")) == (pytest.approx(1.702 / 2.702), 0.999)
    assert settings.start(family_named("silu")) == (0.5, 0.999)
    given = TrainCTSettings(init_beta=0.7, init_c=0.3)
    assert given.start(family_named("gelu")) == (0.7, 0.3)
