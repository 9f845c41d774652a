"""SiLU and GELU networks: real timm and torchvision models steered by CT, checked against a reference.

The reference shares no code with ct_tune.steering: a deep copy of the model whose every activation module
(``nn.ReLU``, ``nn.SiLU``, ``nn.GELU``, timm's ``GELU``) is swapped for a module computing CT's documented
formula, ``c * gate(s * beta * x / m) * x + (1 - c) * softplus(x / m) * m`` with ``m = 1 - beta``, written
out here: gate sigmoid and s = 1 for ReLU and SiLU, the normal CDF (or GELU's tanh form) and s = 1 / 1.702
for GELU. Each module's beta is its unit's beta through the unit -> sites map. regnety_002 (a ReLU network)
rides along: its units and numbers must be what they were before families existed.

The unit lists are written from the architectures: ConvNeXt-atto and Swin-T have depths 2, 2, 6, 2 and no
activation in their stems or downsampling layers; a ViT is twelve blocks at one resolution (one stage);
EfficientNet-B0 has a SiLU stem conv, seven MBConv stages of 1, 2, 2, 3, 3, 4, 1 blocks and a SiLU head conv.
"""

from __future__ import annotations

import copy
import math
import random

import ct_tune
from ct_tune import InputError
from ct_tune.steering import find_layout, group_sites, trace_sites

import pytest
import timm.layers.activations as timm_acts
import torch
import torch.nn.functional as F
from torch import nn

from tests.steering.zoo import example, timm_model, torchvision_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GELU_BETA0 = 1.702 / 2.702
SCALE = {"relu": 1.0, "silu": 1.0, "gelu": 1 / 1.702, "gelu_tanh": 1 / 1.702}


def gate(family: str, z: torch.Tensor) -> torch.Tensor:
    if family in ("relu", "silu"):
        return torch.sigmoid(z)
    if family == "gelu":
        return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3)))


def formula(x: torch.Tensor, beta: float, c: float, family: str) -> torch.Tensor:
    if beta == 1.0:
        return torch.relu(x)
    m = 1.0 - beta
    smooth = torch.logaddexp(torch.zeros_like(x), x / m) * m
    return c * gate(family, SCALE[family] * beta * x / m) * x + (1.0 - c) * smooth


class RefCT(nn.Module):
    """Stands in for one activation module called once per forward."""

    def __init__(self, beta: float, c: float, family: str) -> None:
        super().__init__()
        self.beta, self.c, self.family = beta, c, family

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return formula(x, self.beta, self.c, self.family)


def family_of(module: nn.Module) -> str | None:
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, nn.SiLU):
        return "silu"
    if isinstance(module, nn.GELU):
        return "gelu_tanh" if module.approximate == "tanh" else "gelu"
    if isinstance(module, timm_acts.GELUTanh):
        return "gelu_tanh"
    if isinstance(module, timm_acts.GELU):
        return "gelu"
    return None


def reference(model: nn.Module, beta_of_site: dict[str, float], c: float) -> nn.Module:
    """A deep copy whose activation module P computes CT at ``beta_of_site[f"{P}#0"]``."""
    ref = copy.deepcopy(model)
    swapped = []
    for path, module in list(ref.named_modules()):
        family = family_of(module)
        if family is not None:
            ref.set_submodule(path, RefCT(beta_of_site[f"{path}#0"], c, family))
            swapped.append(f"{path}#0")
    assert sorted(swapped) == sorted(beta_of_site)  # every site is one module called once: nothing inline
    return ref


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 rounding, relative to the output's size (random-init EfficientNet logits are
    1e-5 (timm) and 1e-14 (torchvision): an absolute tolerance would pass anything)."""
    scale = expected.abs().max()
    torch.testing.assert_close(actual / scale, expected / scale, rtol=1e-5, atol=1e-5)


def assert_changed(actual: torch.Tensor, plain: torch.Tensor) -> None:
    assert (actual - plain).abs().max() > 1e-3 * plain.abs().max()


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    source, arch = name.split("/")
    model = timm_model(arch) if source == "timm" else torchvision_model(arch)
    return model, example(arch)


def blocks(prefix: str, depths: list[int], first: int = 0, step: int = 1) -> list[str]:
    """``prefix`` formatted with each stage's number, then ``.j`` for each of its blocks."""
    return [f"{prefix.format(first + step * i)}.{j}" for i, depth in enumerate(depths) for j in range(depth)]


EFFICIENTNET_B0 = [1, 2, 2, 3, 3, 4, 1]
# model -> (family, layout rule, stage units, block units)
ZOO: dict[str, tuple[str, str, list[str], list[str]]] = {
    "timm/vit_tiny_patch16_224": ("gelu", "timm feature_info", ["blocks"], [f"blocks.{i}" for i in range(12)]),
    "timm/deit_tiny_patch16_224": ("gelu", "timm feature_info", ["blocks"], [f"blocks.{i}" for i in range(12)]),
    "timm/convnext_atto": (
        "gelu",
        "timm feature_info",
        [f"stages.{i}" for i in range(4)],
        blocks("stages.{}.blocks", [2, 2, 6, 2]),
    ),
    "timm/swin_tiny_patch4_window7_224": (
        "gelu",
        "timm feature_info",
        [f"layers.{i}" for i in range(4)],
        blocks("layers.{}.blocks", [2, 2, 6, 2]),
    ),
    "timm/efficientnet_b0": (
        "silu",
        "timm feature_info",
        ["stem", *(f"blocks.{i}" for i in range(7)), "head"],
        ["stem", *blocks("blocks.{}", EFFICIENTNET_B0), "head"],
    ),
    # ReLU: exactly the units it had before SiLU and GELU were steered (depths 1, 1, 4, 7)
    "timm/regnety_002": (
        "relu",
        "timm feature_info",
        ["stem", "s1", "s2", "s3", "s4"],
        ["stem"] + [f"s{k}.b{j}" for k, depth in enumerate([1, 1, 4, 7], 1) for j in range(1, depth + 1)],
    ),
    "torchvision/efficientnet_b0": (
        "silu",
        "torchvision EfficientNet",
        ["stem", *(f"features.{i}" for i in range(1, 8)), "head"],
        ["stem", *blocks("features.{}", EFFICIENTNET_B0, first=1), "head"],
    ),
    # features.0 patch embedding, 2/4/6 patch merging: no activation
    "torchvision/swin_t": (
        "gelu",
        "torchvision SwinTransformer",
        [f"features.{i}" for i in (1, 3, 5, 7)],
        blocks("features.{}", [2, 2, 6, 2], first=1, step=2),
    ),
}


@pytest.mark.parametrize("name", list(ZOO))
def test_units_follow_the_architecture(name):
    model, x = build(name)
    family, rule, stages, block_units = ZOO[name]
    trace = trace_sites(model, x)
    assert trace.families == (family,)
    layout = find_layout(model, trace)
    assert layout is not None and layout.rule == rule
    assert ct_tune.units(model, x, "stage") == stages
    assert ct_tune.units(model, x, "block") == block_units


@pytest.mark.parametrize("name", list(ZOO))
def test_baselines_are_the_network_itself_with_its_gradient(name):
    model, x = build(name)
    family = ZOO[name][0]
    x_plain, x_steered = x.clone().requires_grad_(), x.clone().requires_grad_()
    plain = model(x_plain)
    (plain_grad,) = torch.autograd.grad(plain.sum(), x_plain)
    with ct_tune.steer(model, 0.9, granularity="block", example_input=x) as handle:
        expected = {"relu": 1.0, "silu": 0.5, "gelu": GELU_BETA0}[family]
        assert set(handle.families.values()) == {family}
        assert handle.baselines == dict.fromkeys(handle.units, pytest.approx(expected, abs=1e-12))
        handle.update(handle.baselines)
        out = model(x_steered)
        (grad,) = torch.autograd.grad(out.sum(), x_steered)
    assert torch.equal(out, plain)
    assert torch.equal(grad, plain_grad)


@pytest.mark.parametrize("c", [1.0, 0.4])
@pytest.mark.parametrize("name", list(ZOO))
def test_block_betas_match_the_formula(name, c):
    """Random betas in (0.3, 1) per block; every fourth block left out, so it keeps its family's beta0."""
    model, x = build(name)
    trace = trace_sites(model, x)
    site_units = group_sites(model, trace, "block")
    own = {site.name: ct_tune.steering.family_named(site.family).baseline for site in trace.sites}
    units = list(dict.fromkeys(site_units.values()))
    rng = random.Random(len(units))
    betas = {unit: rng.uniform(0.3, 1.0) for i, unit in enumerate(units) if i % 4 != 3}
    expected = reference(model, {site: betas.get(unit, own[site]) for site, unit in site_units.items()}, c)(x)
    with ct_tune.steer(model, betas, c=c, granularity="block", example_input=x):
        out = model(x)
    assert_close(out, expected)
    assert_changed(out, model(x))


@pytest.mark.parametrize("name", list(ZOO))
def test_beta_one_is_relu_at_every_site(name):
    model, x = build(name)
    sites = [site.name for site in trace_sites(model, x).sites]
    expected = reference(model, dict.fromkeys(sites, 1.0), 1.0)(x)  # torch.relu in place of every activation
    with ct_tune.steer(model, 1.0, granularity="block", example_input=x):
        assert torch.equal(model(x), expected)


# --------------------------------------------------------------------------------------------------
# Inline calls and wrapper modules
class InlineBody(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.conv(x))
        h = F.silu(h)
        return F.gelu(h, approximate="tanh")


class PureGelu(nn.Module):
    """A leaf module whose forward is one GELU of its input: a module site, like timm's GELU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)


class ScaledGelu(nn.Module):
    """Not only a GELU (its output is scaled): the call stays an inline site of this module."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * F.gelu(x)


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.act, self.scaled = InlineBody(), PureGelu(), ScaledGelu()
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.scaled(self.act(self.body(x)))
        return self.fc(h.mean((2, 3)))


SITES = {
    "body.gelu()#0": "gelu",
    "body.silu()#0": "silu",
    "body.gelu()#1": "gelu_tanh",
    "act#0": "gelu",
    "scaled.gelu()#0": "gelu",
}


def mixed_reference(model: Mixed, x: torch.Tensor, beta: dict[str, float], c: float) -> torch.Tensor:
    h = formula(model.body.conv(x), beta["body.gelu()#0"], c, "gelu")
    h = formula(h, beta["body.silu()#0"], c, "silu")
    h = formula(h, beta["body.gelu()#1"], c, "gelu_tanh")
    h = formula(h, beta["act#0"], c, "gelu")
    h = 2.0 * formula(h, beta["scaled.gelu()#0"], c, "gelu")
    return model.fc(h.mean((2, 3)))


def test_inline_calls_and_wrappers_are_found_named_and_steered():
    torch.manual_seed(0)
    model, x = Mixed().eval(), torch.randn(2, 3, 10, 10)
    trace = trace_sites(model, x)
    assert {site.name: site.family for site in trace.sites} == SITES
    assert [site.name for site in trace.sites if not site.inline] == ["act#0"]
    plain = model(x)
    rng = random.Random(3)
    beta = {site: rng.uniform(0.3, 0.95) for site in SITES}
    with ct_tune.steer(model, beta, granularity="site", example_input=x) as handle:
        assert handle.families == SITES
        handle.update(handle.baselines)
        assert torch.equal(model(x), plain)
        for c in (1.0, 0.4):
            handle.update(beta, c=c)
            out = model(x)
            assert_close(out, mixed_reference(model, x, beta, c))
            assert_changed(out, plain)
        handle.update(1.0)
        assert torch.equal(model(x), mixed_reference(model, x, dict.fromkeys(SITES, 1.0), 1.0))
    assert torch.equal(model(x), plain)


def test_a_model_with_other_activations_only_is_refused_naming_them():
    model = nn.Sequential(nn.Linear(4, 4), nn.Hardswish(), nn.Linear(4, 4), nn.ReLU6(), nn.Mish())
    with pytest.raises(InputError) as raised:
        ct_tune.steer(model, 0.8, granularity="block", example_input=torch.randn(2, 4))
    text = str(raised.value)
    assert "\n" not in text
    assert "applies no ReLU, SiLU or GELU on this input, only Hardswish (1 call), ReLU6 (1 call), Mish (1 call)" in text


def test_relu_networks_keep_the_units_they_had():
    """timm's mnasnet_100 (ReLU) has EfficientNet's structure but keeps its units from before SiLU and GELU were
    steered (timm's first tap, blocks.0, joins the stem; only tapped containers are stages): saved profiles and
    studies name them. The same structure with SiLU gets blocks.0..blocks.6 (efficientnet_b0 above)."""
    model, x = build("timm/mnasnet_100")
    assert ct_tune.units(model, x, "stage") == ["stem", "blocks.1", "blocks.2", "blocks.3", "blocks.5", "head"]
