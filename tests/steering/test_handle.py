"""Steering through hooks, checked against an independent reference that replaces modules.

The reference (tests/helpers.py's ``formula`` and ``RefCT`` and the rules here, sharing no code with
ct_tune.steering) deep-copies the model and swaps every nn.ReLU for a module computing the paper's formula,
with betas assigned by hand-written rules per architecture. DenseNet's inline ``F.relu`` is reproduced with
a hand-written forward.
"""

from __future__ import annotations

import copy
import functools
import random
from collections.abc import Callable

import ct_tune

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn

from tests.helpers import TRICKY_SITES, RefCT, Tricky, assert_close_scaled, assert_differs_scaled, formula

TORCHVISION_MODELS = ["resnet18", "resnet50", "vgg11_bn", "densenet121", "mobilenet_v3_small"]


# --------------------------------------------------------------------------------------------------
# Independent reference
# Which unit a ReLU module (path) belongs to, per architecture and granularity, written by hand.
# "relu()" stands for DenseNet's inline F.relu after `features` (the head).
def _resnet(depth: int) -> Callable[[str], str]:
    return lambda path: "stem" if path == "relu" else ".".join(path.split(".")[:depth])


def _vgg11_bn(granularity: str) -> Callable[[str], str]:
    """ReLUs at features.2, 6, 10, 13, 17, 20, 24, 27; max-pools at 3, 7, 14, 21, 28 close the stages."""
    stages = {"2": "features.2", "6": "features.6", "10": "features.10..13", "13": "features.10..13"}
    stages |= {"17": "features.17..20", "20": "features.17..20", "24": "features.24..27", "27": "features.24..27"}

    def rule(path: str) -> str:
        if path.startswith("classifier."):
            return "head"
        return stages[path.split(".")[1]] if granularity == "stage" else path

    return rule


def _densenet(granularity: str) -> Callable[[str], str]:
    """Stem relu0; dense block k (its transition before it joins it); the final inline F.relu is the head."""

    def rule(path: str) -> str:
        if path == "features.relu0":
            return "stem"
        if path == ROOT_INLINE_UNIT:
            return "head"
        parts = path.split(".")
        if granularity == "block":
            return ".".join(parts[:3]) if parts[1].startswith("denseblock") else ".".join(parts[:2])
        if parts[1].startswith("transition"):
            return f"features.denseblock{int(parts[1].removeprefix('transition')) + 1}"
        return ".".join(parts[:2])

    return rule


def _mobilenet(granularity: str) -> Callable[[str], str]:
    """mobilenet_v3_small: blocks 1, 2, 4 and 9 halve the resolution, so the stages are 1 | 2-3 | 4-8 | 9-11."""
    stages = {1: "features.1", 2: "features.2..3", 4: "features.4..8", 9: "features.9..11"}

    def rule(path: str) -> str:
        index = int(path.split(".")[1])
        if granularity == "stage":
            return stages[max(start for start in stages if start <= index)]
        # block 1 is a stage of its own: its block is its only child; later stages are runs of peer blocks
        return "features.1.block" if index == 1 else f"features.{index}"

    return rule


UNIT_RULES: dict[str, dict[str, Callable[[str], str]]] = {
    "resnet18": {"stage": _resnet(1), "block": _resnet(2)},
    "resnet50": {"stage": _resnet(1), "block": _resnet(2)},
    "vgg11_bn": {"stage": _vgg11_bn("stage"), "block": _vgg11_bn("block")},
    "densenet121": {"stage": _densenet("stage"), "block": _densenet("block")},
    "mobilenet_v3_small": {"stage": _mobilenet("stage"), "block": _mobilenet("block")},
}
ROOT_INLINE_UNIT = "relu()"  # DenseNet's F.relu after `features`


def reference_model(model: nn.Module, unit_beta: Callable[[str], float], c: float) -> Callable:
    """A forward function of a deep copy of ``model`` with every ReLU computed by the reference."""
    ref = copy.deepcopy(model)
    for path, module in list(ref.named_modules()):
        if isinstance(module, nn.ReLU):
            ref.set_submodule(path, RefCT([unit_beta(path)], c))

    def forward(x: torch.Tensor) -> torch.Tensor:
        if isinstance(ref, tvm.DenseNet):
            out = formula(ref.features(x), unit_beta(ROOT_INLINE_UNIT), c)
            return ref.classifier(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))
        return ref(x)

    return forward


@functools.cache
def build(name: str) -> nn.Module:
    """One random-init instance per architecture, shared by the tests (each leaves it unsteered)."""
    torch.manual_seed(0)
    return getattr(tvm, name)(num_classes=10).eval()


def build_fresh(name: str) -> nn.Module:
    torch.manual_seed(0)
    return getattr(tvm, name)(num_classes=10).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def random_profile(unit_names: list[str], seed: int) -> dict[str, float]:
    """Random betas for most units; every fourth unit is left out (it must stay ReLU)."""
    rng = random.Random(seed)
    return {name: rng.uniform(0.6, 0.99) for i, name in enumerate(unit_names) if i % 4 != 3}


def assert_model_pristine(model: nn.Module, inplace_flags: dict[str, bool]) -> None:
    for path, module in model.named_modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, path
        assert "forward" not in module.__dict__, path
        if isinstance(module, nn.ReLU):
            assert module.inplace == inplace_flags[path], path
    assert torch._C._len_torch_function_stack() == 0


def inplace_flags_of(model: nn.Module) -> dict[str, bool]:
    return {p: m.inplace for p, m in model.named_modules() if isinstance(m, nn.ReLU)}


# --------------------------------------------------------------------------------------------------
# Against the reference, on real torchvision models
@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_global_beta_matches_reference(name, x):
    model = build(name)
    expected = reference_model(model, lambda unit: 0.8, 0.5)(x)
    with ct_tune.steer(model, 0.8):
        out = model(x)
    assert_close_scaled(out, expected)
    assert_differs_scaled(out, model(x))  # steering did something


@pytest.mark.parametrize("granularity", ["stage", "block"])
@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_unit_profile_matches_reference(name, granularity, x):
    model = build(name)
    names = ct_tune.units(model, x, granularity)
    profile = random_profile(names, seed=len(names))
    rule = UNIT_RULES[name][granularity]

    def unit_beta(path: str) -> float:
        return profile.get(rule(path), 1.0)

    expected = reference_model(model, unit_beta, 0.3)(x)
    with ct_tune.steer(model, profile, c=0.3, granularity=granularity, example_input=x) as handle:
        out = model(x)
        assert handle.betas == {n: profile.get(n, 1.0) for n in names}
    assert_close_scaled(out, expected)
    assert_differs_scaled(out, model(x))


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_input_gradients_finite_and_match_reference(name, x):
    model = build(name)
    names = ct_tune.units(model, x, "stage")
    profile = random_profile(names, seed=7)
    rule = UNIT_RULES[name]["stage"]
    ref = reference_model(model, lambda p: profile.get(rule(p), 1.0), 0.5)
    x_ref = x.clone().requires_grad_(True)
    ref(x_ref).logsumexp(1).sum().backward()
    x_ours = x.clone().requires_grad_(True)
    with ct_tune.steer(model, profile, granularity="stage", example_input=x):
        model(x_ours).logsumexp(1).sum().backward()
    assert torch.isfinite(x_ours.grad).all()
    assert x_ref.grad.abs().max() > 0
    assert_close_scaled(x_ours.grad, x_ref.grad, rtol=1e-3)


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_beta_one_is_bit_identical_and_remove_restores_everything(name, x):
    model = build(name)
    flags = inplace_flags_of(model)
    plain = model(x)
    with ct_tune.steer(model, 1.0, granularity="block", example_input=x) as handle:
        assert torch.equal(model(x), plain)
        handle.update(0.9)
        assert not torch.equal(model(x), plain)
    assert torch.equal(model(x), plain)
    assert_model_pristine(model, flags)


def test_resnet_units_are_exactly_the_documented_names(x):
    model = build("resnet18")
    assert ct_tune.units(model, x, "global") == ["global"]
    assert ct_tune.units(model, x, "stage") == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert ct_tune.units(model, x, "block") == ["stem"] + [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    sites = ct_tune.units(model, x, "site")
    assert sites[:3] == ["relu#0", "layer1.0.relu#0", "layer1.0.relu#1"]
    assert len(sites) == 1 + 8 * 2  # the stem, then two calls of each BasicBlock's reused relu
    bottleneck_sites = ct_tune.units(build("resnet50"), x, "site")
    assert bottleneck_sites[1:4] == ["layer1.0.relu#0", "layer1.0.relu#1", "layer1.0.relu#2"]


def test_densenet_inline_relu_is_the_head(x):
    stages = ct_tune.units(build("densenet121"), x, "stage")
    assert stages == ["stem", *(f"features.denseblock{k}" for k in range(1, 5)), "head"]


def test_block_profile_changes_only_activations_at_and_after_that_block(x):
    model = build("resnet18")

    def record(store: dict[str, torch.Tensor]):
        def hook(module, args, output, path):
            store.setdefault(path, output.clone())  # returns None: a hook's return value replaces the output

        return [
            module.register_forward_hook(lambda m, a, o, p=path: hook(m, a, o, p))
            for path, module in model.named_modules()
            if path
        ]

    plain: dict[str, torch.Tensor] = {}
    hooks = record(plain)
    model(x)
    for h in hooks:
        h.remove()
    order = list(plain)  # modules in the order their forward finished

    steered: dict[str, torch.Tensor] = {}
    with ct_tune.steer(model, {"layer2.1": 0.7}, granularity="block", example_input=x):
        hooks = record(steered)
        model(x)
        for h in hooks:
            h.remove()
    first = next(i for i, p in enumerate(order) if p.startswith("layer2.1"))
    for path in order[:first]:
        assert torch.equal(steered[path], plain[path]), f"{path} runs before layer2.1 but changed"
    for path in ["layer2.1.relu", "layer2.1", "layer3", "layer4", "fc"]:
        assert not torch.equal(steered[path], plain[path]), f"{path} should have changed"


# --------------------------------------------------------------------------------------------------
# A user model with every way of applying ReLU
def tricky_reference(model: Tricky, x: torch.Tensor, beta: dict[str, float], c: float = 0.5) -> torch.Tensor:
    def f(site: str, t: torch.Tensor) -> torch.Tensor:
        return formula(t, beta.get(site, 1.0), c)

    b = model.block
    h = f("relu#1", model.fc2(f("relu#0", model.fc1(x))))
    y = f("block.relu()#0", b.lin1(h))
    z = f("block.relu()#1", b.lin2(y))
    w = f("block.relu()#2", b.lin3(z))
    h = w + f("block.relu()#3", h)
    return model.out(f("relu()#0", model.fc3(h)))


@pytest.fixture
def tricky() -> Tricky:
    torch.manual_seed(0)
    return Tricky().eval()


def test_user_model_sites_cover_reused_and_inline_relus(tricky):
    x = torch.randn(4, 8)
    assert ct_tune.units(tricky, x, "site") == TRICKY_SITES
    assert ct_tune.units(tricky, x, "stage") == ["relu", "block", "relu()"]


def test_user_model_per_site_betas_match_reference(tricky):
    x = torch.randn(4, 8)
    betas = {site: 0.6 + 0.05 * i for i, site in enumerate(TRICKY_SITES) if site != "block.relu()#2"}
    expected = tricky_reference(tricky, x, betas)
    with ct_tune.steer(tricky, betas, granularity="site", example_input=x):
        out = tricky(x)
        out_again = tricky(x)  # call counters restart at every forward
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out_again, expected)
    torch.testing.assert_close(tricky(x), tricky_reference(tricky, x, {}))


def test_user_model_gradients_through_inline_and_inplace_relus(tricky):
    betas = {site: 0.8 for site in TRICKY_SITES}
    x_ref = torch.randn(4, 8, requires_grad=True)
    tricky_reference(tricky, x_ref, betas).sum().backward()
    x_ours = x_ref.detach().clone().requires_grad_(True)
    with ct_tune.steer(tricky, 0.8):  # global, no example input: inline calls caught all the same
        tricky(x_ours).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad)


def test_global_without_example_input_equals_traced_global(x):
    model = build("densenet121")
    with ct_tune.steer(model, 0.85, c=0.4):
        untraced = model(x)
    with ct_tune.steer(model, 0.85, c=0.4, granularity="global", example_input=x):
        traced = model(x)
    torch.testing.assert_close(untraced, traced, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# Lifecycle, updates, errors
def test_update_changes_betas_without_rebuilding_or_copying(x):
    model = build("resnet18")
    modules = {path: id(m) for path, m in model.named_modules()}
    storages = [p.data_ptr() for p in model.parameters()]
    handle = ct_tune.steer(model, 0.9, granularity="stage", example_input=x)
    model(x)
    handle.update({"layer3": 0.7}, c=0.2)
    updated = model(x)
    handle.remove()
    with ct_tune.steer(model, {"layer3": 0.7}, c=0.2, granularity="stage", example_input=x):
        fresh = model(x)
    torch.testing.assert_close(updated, fresh, rtol=0, atol=0)
    assert {path: id(m) for path, m in model.named_modules()} == modules
    assert [p.data_ptr() for p in model.parameters()] == storages


def test_failed_update_keeps_previous_betas(x):
    model = build("resnet18")
    with ct_tune.steer(model, {"layer1": 0.8}, granularity="stage", example_input=x) as handle:
        before = model(x)
        with pytest.raises(ValueError, match="valid units: stem, layer1, layer2, layer3, layer4"):
            handle.update({"layer9": 0.5})
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            handle.update({"layer2": 1.5})
        assert torch.equal(model(x), before)


def test_unknown_unit_lists_valid_names(x):
    model = build("resnet18")
    with pytest.raises(ValueError, match=r"unknown unit\(s\) layer1\.7 .*valid units: stem, layer1\.0, layer1\.1"):
        ct_tune.steer(model, {"layer1.7": 0.9}, granularity="block", example_input=x)
    assert_model_pristine(model, inplace_flags_of(build_fresh("resnet18")))


def test_exception_inside_with_block_restores_the_model(x):
    model = build("densenet121")  # has an inline ReLU, so the function mode is installed too
    flags = inplace_flags_of(model)
    plain = model(x)
    with pytest.raises(RuntimeError, match="boom"), ct_tune.steer(model, 0.7, granularity="block", example_input=x):
        model(x)
        raise RuntimeError("boom")
    assert_model_pristine(model, flags)
    assert torch.equal(model(x), plain)


def test_exception_inside_forward_leaves_no_function_mode_active(x):
    model = build("densenet121")
    with ct_tune.steer(model, 0.7, granularity="stage", example_input=x):
        with pytest.raises(RuntimeError):
            model(torch.rand(2, 5, 64, 64))  # wrong channel count: fails inside forward
        assert torch._C._len_torch_function_stack() == 0
        torch.testing.assert_close(model(x), model(x))  # and the next forward is steered normally


def test_steering_twice_is_refused(x):
    model = build("resnet18")
    with ct_tune.steer(model, 0.9), pytest.raises(ValueError, match="already steered"):
        ct_tune.steer(model, 0.8)
    ct_tune.steer(model, 0.8).remove()  # fine once the first handle is gone


def test_model_without_relu_is_a_clear_error():
    # GELU and SiLU networks are steered (tests/steering/test_families.py); Hardswish is another function
    model = nn.Sequential(nn.Linear(4, 8), nn.Hardswish(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="applies no ReLU"):
        ct_tune.units(model, torch.randn(1, 4), "block")
    with pytest.raises(ValueError, match="applies no ReLU"):
        ct_tune.steer(model, 0.9, granularity="block", example_input=torch.randn(1, 4))


def test_non_global_granularity_needs_example_input():
    with pytest.raises(ValueError, match="needs example_input"):
        ct_tune.steer(build("resnet18"), 0.9, granularity="block")


def test_unknown_granularity_lists_choices(x):
    with pytest.raises(ValueError, match="global, stage, block, site"):
        ct_tune.units(build("resnet18"), x, "layer")


def test_tracing_keeps_training_flags_and_batchnorm_statistics(x):
    model = build_fresh("resnet18").train()
    model.layer2.eval()
    flags = {path: m.training for path, m in model.named_modules()}
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    ct_tune.units(model, x, "block")
    assert {path: m.training for path, m in model.named_modules()} == flags
    for key, value in model.state_dict().items():
        assert torch.equal(value, stats[key]), key


def test_works_under_inference_mode_and_with_gradients(x):
    model = build("resnet18")
    with ct_tune.steer(model, 0.9, granularity="block", example_input=x):
        with torch.inference_mode():
            inference = model(x)
        torch.testing.assert_close(model(x), inference)
