"""ReLU call sites: where a model applies ReLU, found by running it once.

A *site* is one ReLU call in a forward pass. A ``nn.ReLU`` module called k times per forward gives k
sites (``layer1.0.relu#0``, ``layer1.0.relu#1``); a ReLU applied inline (``F.relu``, ``torch.relu``,
``x.relu_()``, an ``nn.ReLU()`` built inside ``forward``) is named after the registered module whose
forward made the call: ``features.relu()#0`` (``relu()#0`` for the model's own forward).

Sites can only be found by running the model: module reuse and inline calls are invisible to
``named_modules()``. ``trace_sites`` runs one forward pass (eval mode, no grad, training flags
restored) with scope hooks on every module and a ``TorchFunctionMode`` that sees every ReLU call.
The same pass records where each module starts and ends in the sequence of sites (what layouts cut
stages at) and which other activations the model applies (what a model without ReLU is told).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ct_tune._errors import InputError

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["RELU_FUNCTIONS", "Site", "Trace", "call_model", "trace_sites"]

# Every spelling of ReLU reaches the mode as one of these (F.relu_ is torch.relu_).
RELU_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset(
    {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}
)
INPLACE_RELU_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset({torch.relu_, torch.Tensor.relu_})
# Activations CT leaves alone, recorded only to tell a model without ReLU what it applies instead.
OTHER_ACTIVATIONS: frozenset[Callable[..., Any]] = frozenset(
    {
        *(F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, F.relu6, F.leaky_relu, F.leaky_relu_),
        *(F.elu, F.elu_, F.selu, F.celu, F.prelu, F.rrelu, F.glu, F.softplus, F.logsigmoid, F.softsign),
        *(torch.sigmoid, torch.sigmoid_, torch.Tensor.sigmoid, torch.Tensor.sigmoid_, F.sigmoid),
        *(torch.tanh, torch.tanh_, torch.Tensor.tanh, torch.Tensor.tanh_, F.tanh),
    }
)

INLINE_MARK = "relu()"


@dataclass(frozen=True)
class Site:
    """One ReLU call in a forward pass."""

    name: str  # unique: "layer1.0.relu#1", "features.relu()#0", "relu()#0"
    owner: str  # the nn.ReLU module's path, or the path of the module whose forward calls relu inline
    call_index: int  # k-th ReLU call of this owner (per forward)
    inline: bool

    @property
    def path(self) -> tuple[str, ...]:
        """Components used to group sites: module path, plus ``relu()`` for inline calls."""
        parts = tuple(self.owner.split(".")) if self.owner else ()
        return (*parts, INLINE_MARK) if self.inline else parts


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
        """Short hash of the site list: equal for models that apply ReLU at the same places."""
        digest = hashlib.sha256("\n".join(site.name for site in self.sites).encode())
        return digest.hexdigest()[:16]

    @property
    def has_inline(self) -> bool:
        return any(site.inline for site in self.sites)


def site_name(owner: str, call_index: int, inline: bool) -> str:
    if inline:
        return f"{owner}.{INLINE_MARK}#{call_index}" if owner else f"{INLINE_MARK}#{call_index}"
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


class _Recorder(TorchFunctionMode):
    """Records every ReLU call with the innermost running module (maintained by scope hooks)."""

    def __init__(self, relu_modules: set[nn.Module]) -> None:
        super().__init__()
        self.stack: list[tuple[str, nn.Module]] = []
        self.relu_modules = relu_modules
        self.counts: dict[tuple[str, bool], int] = {}
        self.sites: list[Site] = []
        self.entered: dict[str, int] = {}
        self.returned: dict[str, int] = {}
        self.activations: dict[str, int] = {}

    def push(self, path: str, module: nn.Module) -> None:
        self.stack.append((path, module))
        self.entered.setdefault(path, len(self.sites))

    def pop(self, path: str) -> None:
        self.stack.pop()
        self.returned.setdefault(path, len(self.sites))

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        if func in OTHER_ACTIVATIONS and self.stack:
            module = self.stack[-1][1]
            leaf = next(iter(module.children()), None) is None
            label = type(module).__name__ if leaf else f"{getattr(func, '__name__', func)}()"
            self.activations[label] = self.activations.get(label, 0) + 1
        if func in RELU_FUNCTIONS and self.stack:
            owner, module = self.stack[-1]
            # A model that *is* an nn.ReLU has no path to name it by: count it as its own inline call.
            inline = module not in self.relu_modules or not owner
            key = (owner, inline)
            k = self.counts.get(key, 0)
            self.counts[key] = k + 1
            self.sites.append(Site(site_name(owner, k, inline), owner, k, inline))
        return func(*args, **(kwargs or {}))


def trace_sites(model: nn.Module, example_input: Any) -> Trace:
    """Run ``model`` once on ``example_input`` and return its ReLU sites in execution order."""
    if example_input is None:
        raise InputError("example_input is required to find the model's ReLU calls (e.g. torch.zeros(1, 3, 32, 32))")
    relu_modules = {module for module in model.modules() if isinstance(module, nn.ReLU)}
    recorder = _Recorder(relu_modules)
    handles = []
    for path, module in model.named_modules():

        def push(_module, _args, _path=path, _m=module):
            recorder.push(_path, _m)

        def pop(_module, _args, _output, _path=path):
            recorder.pop(_path)

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
    end = len(recorder.sites)
    spans = {path: (start, recorder.returned.get(path, end)) for path, start in recorder.entered.items()}
    return Trace(tuple(recorder.sites), input_shape_of(example_input), spans, dict(recorder.activations))


def describe(names: Sequence[str], limit: int = 12) -> str:
    """Comma-separated names, shortened with a count when there are many (for error messages)."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"
