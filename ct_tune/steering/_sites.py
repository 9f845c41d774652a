"""Activation call sites: where a model applies ReLU, SiLU or GELU, found by running it once.

A *site* is one steerable activation call in a forward pass. An activation module (``nn.ReLU``,
``nn.SiLU``, ``nn.GELU``) called k times per forward gives k sites (``layer1.0.relu#0``,
``layer1.0.relu#1``); an activation applied inline (``F.relu``, ``torch.relu``, ``x.relu_()``, ``F.gelu``,
``F.silu``, a module built inside ``forward``) is named after the registered module whose forward made
the call and the function: ``features.relu()#0``, ``blocks.0.gelu()#0`` (``relu()#0`` for the model's own
forward). A leaf module whose forward is nothing but one SiLU or GELU call of its input (timm's ``GELU``)
counts as an activation module: it is steered by wrapping its forward, which costs nothing per torch op.

Sites can only be found by running the model: module reuse and inline calls are invisible to
``named_modules()``. ``trace_sites`` runs one forward pass (eval mode, no grad, training flags
restored) with scope hooks on every module and a ``TorchFunctionMode`` that sees every activation call.
The same pass records where each module starts and ends in the sequence of sites (what layouts cut
stages at) and which other activations the model applies (what a model with none of them is told).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ct_tune._errors import InputError
from ct_tune.steering._families import (
    STEERABLE_FUNCTIONS,
    Family,
    family_of_call,
    family_of_module,
)

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["Site", "Trace", "call_model", "trace_sites"]

# Activations CT leaves alone, recorded only to tell a model without steerable ones what it applies.
OTHER_ACTIVATIONS: frozenset[Any] = frozenset(
    {
        *(F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, F.relu6, F.leaky_relu, F.leaky_relu_),
        *(F.elu, F.elu_, F.selu, F.celu, F.prelu, F.rrelu, F.glu, F.softplus, F.logsigmoid, F.softsign),
        *(torch.sigmoid, torch.sigmoid_, torch.Tensor.sigmoid, torch.Tensor.sigmoid_, F.sigmoid),
        *(torch.tanh, torch.tanh_, torch.Tensor.tanh, torch.Tensor.tanh_, F.tanh),
    }
)


def inline_mark(family: str) -> str:
    """How an inline call is named: ``relu()``, ``silu()``, ``gelu()`` (both GELU forms)."""
    return "gelu()" if family.startswith("gelu") else f"{family}()"


@dataclass(frozen=True)
class Site:
    """One steerable activation call in a forward pass."""

    name: str  # unique: "layer1.0.relu#1", "features.relu()#0", "relu()#0", "blocks.0.mlp.act#0"
    owner: str  # the activation module's path, or the path of the module whose forward calls it inline
    call_index: int  # k-th call of this owner (per forward; inline calls counted per function)
    inline: bool
    family: str = "relu"  # "relu", "silu", "gelu", "gelu_tanh" (ct_tune.steering._families)

    @property
    def path(self) -> tuple[str, ...]:
        """Components used to group sites: module path, plus ``relu()``/``gelu()``/... for inline calls."""
        parts = tuple(self.owner.split(".")) if self.owner else ()
        return (*parts, inline_mark(self.family)) if self.inline else parts


@dataclass(frozen=True)
class Trace:
    """The ReLU sites of a model in execution order, and the input shape that found them."""

    sites: tuple[Site, ...]
    input_shape: tuple[int, ...] | None
    # module path -> (sites run when it was first entered, sites run when its forward first returned)
    spans: Mapping[str, tuple[int, int]] = field(default_factory=dict, compare=False, repr=False)
    # activations other than ReLU -> calls: a leaf module's class ("SiLU"), else the function ("gelu()")
    activations: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def fingerprint(self) -> str:
        """Short hash of the site list: equal for models that apply the same activations at the same places
        (a ReLU site hashes by its name alone, as before families existed)."""
        lines = (site.name if site.family == "relu" else f"{site.name} {site.family}" for site in self.sites)
        digest = hashlib.sha256("\n".join(lines).encode())
        return digest.hexdigest()[:16]

    @property
    def families(self) -> tuple[str, ...]:
        """The families of the sites, each once, in network order."""
        return tuple(dict.fromkeys(site.family for site in self.sites))

    @property
    def has_inline(self) -> bool:
        return any(site.inline for site in self.sites)


def site_name(owner: str, call_index: int, inline: bool, family: str = "relu") -> str:
    if inline:
        mark = inline_mark(family)
        return f"{owner}.{mark}#{call_index}" if owner else f"{mark}#{call_index}"
    return f"{owner}#{call_index}"


def call_model(model: nn.Module, example_input: Any) -> Any:
    """Call ``model`` with a tensor, a tuple/list of positional arguments, or a dict of keywords."""
    if isinstance(example_input, Mapping):
        return model(**example_input)
    if isinstance(example_input, (tuple, list)):
        return model(*example_input)
    return model(example_input)


def input_shape_of(example_input: Any) -> tuple[int, ...] | None:
    """Shape of a single-tensor example input (kept in profiles to rebuild an input later)."""
    if isinstance(example_input, torch.Tensor):
        return tuple(example_input.shape)
    if isinstance(example_input, (tuple, list)) and len(example_input) == 1:
        return input_shape_of(example_input[0])
    return None


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every module in eval mode (no BatchNorm statistics updates) and restore each flag after."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


@dataclass
class _Call:
    """One steerable call as the recorder saw it (sites are named once the pass is over)."""

    owner: str
    module: nn.Module
    family: Family


class _Recorder(TorchFunctionMode):
    """Records every steerable call with the innermost running module (maintained by scope hooks)."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, nn.Module, Any]] = []  # (path, module, first positional argument)
        self.calls: list[_Call] = []
        self.entered: dict[str, int] = {}
        self.returned: dict[str, int] = {}
        self.activations: dict[str, int] = {}
        # leaf modules seen making one gated call from their input to their output, and those seen not to
        self.wrappers: dict[nn.Module, Family] = {}
        self.not_wrappers: set[nn.Module] = set()
        self._frame: list[list[tuple[Family, Any, Any]]] = []  # per open module: (family, input, output)

    def push(self, path: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.stack.append((path, module, args[0] if args else None))
        self._frame.append([])
        self.entered.setdefault(path, len(self.calls))

    def pop(self, path: str, output: Any) -> None:
        _path, module, first = self.stack.pop()
        made = self._frame.pop()
        self.returned.setdefault(path, len(self.calls))
        if made or module in self.wrappers:
            self._judge_wrapper(module, first, output, made)

    def _judge_wrapper(self, module: nn.Module, first: Any, output: Any, made: list[tuple[Family, Any, Any]]) -> None:
        leaf = next(iter(module.children()), None) is None
        family = made[0][0] if len(made) == 1 else None
        pure = leaf and family is not None and family.gated and made[0][1] is first and made[0][2] is output
        if not pure or self.wrappers.get(module, family) is not family or module in self.not_wrappers:
            self.wrappers.pop(module, None)
            self.not_wrappers.add(module)
            return
        self.wrappers[module] = family

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if func in OTHER_ACTIVATIONS and self.stack:
            module = self.stack[-1][1]
            leaf = next(iter(module.children()), None) is None
            label = type(module).__name__ if leaf else f"{getattr(func, '__name__', func)}()"
            self.activations[label] = self.activations.get(label, 0) + 1
        result = func(*args, **kwargs)
        if func in STEERABLE_FUNCTIONS and self.stack:
            owner, module, _first = self.stack[-1]
            family = family_of_call(func, args, kwargs)
            self.calls.append(_Call(owner, module, family))
            self._frame[-1].append((family, args[0] if args else kwargs.get("input"), result))
        return result

    def sites(self) -> list[Site]:
        """Name the calls: activation modules (and pure wrappers) by path, the rest inline per function."""
        counts: dict[tuple[str, bool, str], int] = {}
        sites = []
        for call in self.calls:
            module_family = family_of_module(call.module) or self.wrappers.get(call.module)
            # A model that *is* an activation module has no path to name it by: count it as its own inline call.
            inline = module_family is None or not call.owner
            family = call.family if inline or module_family is None else module_family
            key = (call.owner, inline, inline_mark(family.name) if inline else "")
            k = counts.get(key, 0)
            counts[key] = k + 1
            sites.append(Site(site_name(call.owner, k, inline, family.name), call.owner, k, inline, family.name))
        return sites


def trace_sites(model: nn.Module, example_input: Any) -> Trace:
    """Run ``model`` once on ``example_input`` and return its activation sites in execution order."""
    if example_input is None:
        raise InputError(
            "example_input is required to find the model's activation calls (e.g. torch.zeros(1, 3, 32, 32))"
        )
    recorder = _Recorder()
    handles = []
    for path, module in model.named_modules():

        def push(_module, args, _path=path, _m=module):
            recorder.push(_path, _m, args)

        def pop(_module, _args, output, _path=path):
            recorder.pop(_path, output)

        handles.append(module.register_forward_pre_hook(push))
        handles.append(module.register_forward_hook(pop, always_call=True))
    try:
        with eval_mode(model), torch.no_grad(), recorder:
            try:
                call_model(model, example_input)
            except Exception as error:
                raise InputError(
                    f"the model failed on example_input of shape {input_shape_of(example_input)}: "
                    f"{type(error).__name__}: {error}"
                ) from error
    finally:
        for handle in handles:
            handle.remove()
    sites = recorder.sites()
    end = len(sites)
    spans = {path: (start, recorder.returned.get(path, end)) for path, start in recorder.entered.items()}
    return Trace(tuple(sites), input_shape_of(example_input), spans, dict(recorder.activations))


def wrapped_modules(model: nn.Module, trace: Trace) -> dict[nn.Module, str]:
    """The modules whose forward steering replaces (non-inline sites), with their family."""
    modules = dict(model.named_modules())
    return {modules[site.owner]: site.family for site in trace.sites if not site.inline}


def describe(names: Sequence[str], limit: int = 12) -> str:
    """Comma-separated names, shortened with a count when there are many (for error messages)."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"
