"""Steering real timm networks (built without weights), checked against an independent reference.

The reference shares no code with ct_tune.steering: it deep-copies the model and swaps every nn.ReLU for a
module computing the paper's formula, with one beta per call of that module (modules called several times,
as DLA's and HRNet's blocks do, get one beta per call), each call's beta being its unit's beta through the
unit -> sites map. These timm models apply ReLU through modules only (checked), so nothing inline needs
patching.
"""

from __future__ import annotations

import copy
import random

import ct_tune
from ct_tune.steering import group_sites, trace_sites

import pytest
import torch
from torch import nn

from tests.helpers import RefCT, assert_close_scaled, assert_differs_scaled
from tests.steering.zoo import example, timm_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# resnet, resnet-d, regnet, densenet, dla, vgg, hrnet, dpn
TIMM_MODELS = ["resnet18", "resnet26d", "regnetx_002", "densenet121", "dla34", "vgg11", "hrnet_w18_small", "dpn68"]


def reference(model: nn.Module, beta_of_site: dict[str, float], c: float) -> nn.Module:
    """A deep copy whose k-th call of ReLU module P computes CT at ``beta_of_site[f"{P}#{k}"]``."""
    ref = copy.deepcopy(model)
    for path, module in list(ref.named_modules()):
        if isinstance(module, nn.ReLU):
            calls = [beta_of_site[f"{path}#{k}"] for k in range(_calls(beta_of_site, path))]
            ref.set_submodule(path, RefCT(calls or [1.0], c))
    return ref


def _calls(beta_of_site: dict[str, float], path: str) -> int:
    return sum(1 for site in beta_of_site if site.rpartition("#")[0] == path)


def random_betas(units: list[str], seed: int) -> dict[str, float]:
    """Random betas for most units; every fourth unit is left out (it must stay ReLU)."""
    rng = random.Random(seed)
    return {unit: rng.uniform(0.6, 0.99) for i, unit in enumerate(units) if i % 4 != 3}


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_global_beta_matches_reference(name):
    model, x = timm_model(name), example(name)
    sites = [site.name for site in trace_sites(model, x).sites]
    expected = reference(model, dict.fromkeys(sites, 0.8), 0.5)(x)
    with ct_tune.steer(model, 0.8):  # no example input: every nn.ReLU module
        out = model(x)
    assert_close_scaled(out, expected)
    assert_differs_scaled(out, model(x))


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_block_betas_match_reference(name):
    model, x = timm_model(name), example(name)
    trace = trace_sites(model, x)
    assert not trace.has_inline  # what the reference relies on
    site_units = group_sites(model, trace, "block")
    units = list(dict.fromkeys(site_units.values()))
    betas = random_betas(units, seed=len(units))
    expected = reference(model, {site: betas.get(unit, 1.0) for site, unit in site_units.items()}, 0.3)(x)
    with ct_tune.steer(model, betas, c=0.3, granularity="block", example_input=x) as handle:
        assert list(handle.units) == units
        out = model(x)
    assert_close_scaled(out, expected)
    assert_differs_scaled(out, model(x))


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_beta_one_is_bit_identical(name):
    model, x = timm_model(name), example(name)
    plain = model(x)
    with ct_tune.steer(model, 1.0, granularity="block", example_input=x):
        assert torch.equal(model(x), plain)
    assert torch.equal(model(x), plain)
