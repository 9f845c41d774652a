"""Apply CT to a live model without copying or rebuilding it.

How an activation call (ReLU, SiLU, GELU: ``ct_tune.steering._families``) is replaced:
- Activation modules (``nn.ReLU``, ``nn.SiLU``, ``nn.GELU``, and leaf modules that only apply one of the
  gated ones): the instance's ``forward`` is wrapped (an instance attribute, deleted on
  removal). A forward *hook* would let ReLU run first and then recompute from an input that
  ``inplace=True`` has already overwritten; the wrapper reads the pre-activation and skips the wasted
  ReLU pass. ``inplace`` flags are never touched.
- Inline calls (``F.relu``, ``torch.relu``, ``x.relu_()``, ``F.gelu``, ``F.silu``, a module built in ``forward``):
  a ``TorchFunctionMode`` active during the forward pass, with scope hooks on every module to know
  which module made the call. Installed only when the model has inline calls (it costs a Python call
  per torch op). In-place spellings keep their semantics: the input tensor receives the result.

Betas live in a table read at call time, so ``handle.update(...)`` between trials costs nothing.
Each site keeps its family: one beta means the same smoothness everywhere, and ``c=None`` (the default)
gives every site its family's c (0.5 for ReLU, 1 for SiLU and GELU, where beta0 is their own function).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

from ct_tune._errors import InputError
from ct_tune.steering._activation import BetaLike, check_beta, check_c, ct_hot
from ct_tune.steering._batched import GroupedBeta
from ct_tune.steering._channel import ChannelCT
from ct_tune.steering._families import (
    STEERABLE_FUNCTIONS,
    Family,
    family_named,
    family_of_call,
    family_of_module,
    is_inplace_call,
)
from ct_tune.steering._grouping import Groups, check_granularity, group_sites, normalize_groups, unit_families
from ct_tune.steering._profile import BetaProfile, channel_granularity
from ct_tune.steering._sites import Trace, describe, inline_mark, trace_sites, wrapped_modules

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

__all__ = ["SteeringHandle", "steer", "units"]

logger = logging.getLogger(__name__)

BetaSpec = BetaLike | Mapping[str, BetaLike | ChannelCT]

# Models currently steered, so a second steer() on the same model fails loudly instead of stacking.
_STEERED: weakref.WeakKeyDictionary[nn.Module, SteeringHandle] = weakref.WeakKeyDictionary()


def units(
    model: nn.Module, example_input: Any, granularity: str = "global", *, groups: Groups | None = None
) -> list[str]:
    """The ordered unit names of ``model`` at ``granularity`` (one beta per unit; ``groups`` for custom)."""
    check_granularity(granularity, groups)
    trace = checked_trace(model, example_input)
    return list(dict.fromkeys(group_sites(model, trace, granularity, groups).values()))


def steer(
    model: nn.Module,
    beta: BetaSpec,
    *,
    c: float | None = None,
    granularity: str = "global",
    example_input: Any = None,
    groups: Groups | None = None,
) -> SteeringHandle:
    """Replace the model's ReLU, SiLU and GELU calls by CT in place; undo with ``.remove()`` or a ``with`` block.

    Args:
        model: the network, steered in place through forward hooks (no copy); its weights are untouched.
        beta: a float in (0, 1] for every site (1 is ReLU exactly; a SiLU site is itself at 0.5, a GELU
            site at 0.6299 with c = 1), or ``{unit: beta}`` where missing units become ReLU (unit names as
            ``ct_tune.units`` lists them; ``handle.baselines`` gives each unit's own-activation beta).
        c: the mix of CT's two smoothings, in [0, 1]; ``None``: each site's family's (0.5 for ReLU, the
            paper's default; 1 for SiLU and GELU).
        granularity: ``global`` (one beta), ``stage``, ``block``, ``site`` (one per ReLU call) or ``custom``.
        example_input: one batch, or a tuple/dict of arguments, run once to find the ReLU calls; required
            unless ``granularity="global"``, where every ``nn.ReLU`` module and inline ReLU call is steered
            without knowing their names.
        groups: ``custom`` units as ``{unit: module-path prefix or list of prefixes}``.

    Returns a ``SteeringHandle``: ``update`` changes the betas between evaluations without rebuilding
    anything, ``profile`` saves them, ``remove`` restores the plain model.
    """
    check_granularity(granularity, groups)
    if c is not None:
        check_c(c)
    if model in _STEERED:
        raise InputError("this model is already steered: call .update() on its handle, or .remove() it first")
    if example_input is None and granularity != "global":
        raise InputError(
            f"granularity={granularity!r} needs example_input (one input batch, e.g. torch.zeros(1, 3, 32, 32)) "
            "to find the model's ReLU calls"
        )
    trace = checked_trace(model, example_input) if example_input is not None else None
    return steer_traced(model, beta, c=c, granularity=granularity, trace=trace, groups=groups)


def steer_traced(
    model: nn.Module,
    beta: BetaSpec,
    *,
    c: float | None,
    granularity: str,
    trace: Trace | None,
    groups: Groups | None = None,
) -> SteeringHandle:
    """``steer`` with the sites already traced (``None``: global steering of every activation module and call)."""
    if model in _STEERED:
        raise InputError("this model is already steered: call .update() on its handle, or .remove() it first")
    handle = SteeringHandle(model, granularity, trace, groups)
    if c is not None:
        check_c(c)
    handle._state.c = None if c is None else float(c)
    handle.update(beta)
    handle._attach()
    return handle


def checked_trace(model: nn.Module, example_input: Any) -> Trace:
    """``trace_sites``, refusing a model that applies no ReLU, SiLU or GELU (nothing to steer), naming what
    it applies instead."""
    trace = trace_sites(model, example_input)
    if not trace.sites:
        name = type(model).__name__
        if not trace.activations:
            raise InputError(
                f"{name} applies no ReLU, SiLU or GELU (nor any other activation) on this input: nothing to steer"
            )
        used = ", ".join(
            f"{label} ({count} call{'s' if count > 1 else ''})" for label, count in trace.activations.items()
        )
        raise InputError(
            f"{name} applies no ReLU, SiLU or GELU on this input, only {used}: there is nothing to steer "
            "(CT steers those three families and leaves other functions alone)"
        )
    return trace


@dataclass
class _ModuleSlot:
    """Betas of one activation module, one per call in a forward pass."""

    betas: list[BetaLike]
    family: Family
    calls: int = 0


InlineKey = tuple[str, str]  # (owner path, inline mark: "relu()", "gelu()", ...)


@dataclass
class _State:
    """What the wrapped forwards and the mode read at call time."""

    c: float | None = None  # None: each site's family's c
    default: BetaLike = 1.0  # for calls not seen in the trace (or every call, when untraced)
    modules: dict[nn.Module, _ModuleSlot] = field(default_factory=dict)
    inline: dict[InlineKey, list[BetaLike]] = field(default_factory=dict)  # betas per call
    inline_calls: dict[InlineKey, int] = field(default_factory=dict)
    scope: list[str] = field(default_factory=list)
    warned: set[InlineKey] = field(default_factory=set)

    def c_for(self, family: Family) -> float:
        return family.default_c if self.c is None else self.c

    def reset_calls(self) -> None:
        for slot in self.modules.values():
            slot.calls = 0
        self.inline_calls.clear()


class SteeringHandle:
    """A model steered by CT. Use as a context manager, or call ``remove()``; ``update()`` between trials."""

    def __init__(self, model: nn.Module, granularity: str, trace: Trace | None, groups: Groups | None = None) -> None:
        self.model = model
        self.granularity = granularity
        self.groups = normalize_groups(groups) if groups else None
        self.trace = trace
        if trace is None:
            self._site_units: dict[str, str] = {}
            self.units: tuple[str, ...] = ("global",)
        else:
            self._site_units = group_sites(model, trace, granularity, self.groups)
            self.units = tuple(dict.fromkeys(self._site_units.values()))
        self._families = unit_families(trace, self._site_units) if trace is not None else {}
        self._state = _State()
        self._betas: dict[str, BetaLike] = {}
        self._profiles = 1
        self._hooks: list[RemovableHandle] = []
        self._wrapped: list[tuple[nn.Module, Any]] = []
        self._mode: _InlineReluMode | None = None
        self._attached = False

    # ----------------------------------------------------------------------------------------------
    # Betas
    def update(self, beta: BetaSpec, *, c: float | None = None) -> None:
        """Set new betas (and optionally c) without touching the model's structure."""
        if c is not None:
            check_c(c)
        betas = self._resolve(beta)
        if c is not None:
            self._state.c = float(c)
        self._profiles = 1
        self._distribute(betas)

    def update_batched(self, profiles: Sequence[BetaSpec], *, c: float | Sequence[float] | None = None) -> None:
        """Steer with K profiles at once (batched trials): slice k of every batch gets profile k.

        The model must then be called on K stacked copies of the samples (``ct_tune.steering.stack``);
        slice k of the output (``ct_tune.steering.split``) is what ``update(profiles[k], c=c[k])``
        would give. ``c`` is one value for every profile or one per profile. ``update()`` ends it.
        """
        if isinstance(profiles, (Mapping, str, float, int)) or not profiles:
            raise InputError("update_batched takes a non-empty list of profiles (a beta or {unit: beta} each)")
        resolved = [self._resolve(profile) for profile in profiles]
        if any(isinstance(value, (torch.Tensor, ChannelCT)) for betas in resolved for value in betas.values()):
            raise InputError("batched profiles take float betas (one profile per slice already gives per-sample betas)")
        k = len(resolved)
        if c is None:
            cs: list[float | None] = [self._state.c] * k
        elif isinstance(c, Real):
            check_c(c)
            cs = [float(c)] * k
        else:
            cs = [None if value is None else float(value) for value in c]
            if len(cs) != k:
                raise InputError(f"c gives {len(cs)} values for {k} profiles; give one c, or one per profile")
            for value in cs:
                if value is not None:
                    check_c(value)
        grouped = {unit: GroupedBeta([betas[unit] for betas in resolved], cs) for unit in self.units}
        self._profiles = k
        self._distribute(grouped)  # type: ignore[arg-type]

    @property
    def profiles(self) -> int:
        """How many profiles steer the model at once: 1 after ``update``, K after ``update_batched``."""
        return self._profiles

    def _distribute(self, betas: Mapping[str, BetaLike | GroupedBeta]) -> None:
        """Put each unit's value where the wrapped forwards and the mode read it."""
        state = self._state
        self._betas = dict(betas)
        if self.trace is None:
            state.default = betas["global"]
            return
        by_site = {name: betas.get(unit, 1.0) for name, unit in self._site_units.items()}
        module_betas: dict[str, list[BetaLike]] = {}
        inline_betas: dict[InlineKey, list[BetaLike]] = {}
        for site in self.trace.sites:
            if site.inline:
                inline_betas.setdefault((site.owner, inline_mark(site.family)), []).append(by_site[site.name])
            else:
                module_betas.setdefault(site.owner, []).append(by_site[site.name])
        modules = dict(self.model.named_modules())
        families = {module: family_named(name) for module, name in wrapped_modules(self.model, self.trace).items()}
        for owner, values in module_betas.items():
            module = modules[owner]
            slot = state.modules.setdefault(module, _ModuleSlot([], families[module]))
            slot.betas = values  # the slot object stays: wrapped forwards hold it
        state.inline = inline_betas

    def _resolve(self, beta: BetaSpec) -> dict[str, BetaLike]:
        if isinstance(beta, Mapping):
            unknown = [name for name in beta if name not in self.units]
            if unknown:
                raise InputError(
                    f"unknown unit(s) {describe(unknown)} for granularity {self.granularity!r}; "
                    f"valid units: {describe(list(self.units), limit=40)}"
                )
            for name, value in beta.items():
                if not isinstance(value, ChannelCT):  # checked when it was made
                    check_beta(value, name=f"beta[{name!r}]")
            return {unit: _as_beta(beta.get(unit, 1.0)) for unit in self.units}
        check_beta(beta)
        return dict.fromkeys(self.units, _as_beta(beta))

    @property
    def betas(self) -> dict[str, BetaLike]:
        """Current beta of every unit, in network order."""
        return dict(self._betas)

    @property
    def c(self) -> float | None:
        """The c every site uses, or None: each site's family's (0.5 for ReLU, 1 for SiLU and GELU)."""
        return self._state.c

    @property
    def families(self) -> dict[str, str]:
        """Each unit's activation family (``relu``, ``silu``, ``gelu``, ``gelu_tanh``), in network order;
        empty when steering untraced (global, without example_input)."""
        return dict(self._families)

    @property
    def baselines(self) -> dict[str, float]:
        """Each unit's beta0: with c = None, ``update(handle.baselines)`` is the unsteered network exactly."""
        return {unit: family_named(name).baseline for unit, name in self._families.items()}

    def profile(self, **metadata: Any) -> BetaProfile:
        """The current betas as a ``BetaProfile`` (save it with ``.save(path)``)."""
        if self._profiles != 1:
            raise InputError(f"the model is steered with {self._profiles} profiles at once; update() with one first")
        if any(isinstance(value, torch.Tensor) for value in self._betas.values()):
            raise InputError("per-sample (tensor) betas cannot be saved as a profile; update() with floats first")
        trace = self.trace
        channels = None
        if any(isinstance(value, ChannelCT) for value in self._betas.values()):
            channels = {
                unit: _channel_values(value, self._state.c_for(family_named(self._families[unit])))
                for unit, value in self._betas.items()
            }
        return BetaProfile(
            granularity=channel_granularity(self.granularity, channels),
            betas={unit: _mean_beta(value) for unit, value in self._betas.items()},
            channels=channels,
            groups=self.groups,
            c=_mean_c(channels) if channels else self.c,
            fingerprint=trace.fingerprint if trace else None,
            input_shape=list(trace.input_shape) if trace and trace.input_shape else None,
            model=type(self.model).__name__,
            metadata=dict(metadata),
            families=self._families if any(name != "relu" for name in self._families.values()) else None,
        )

    # ----------------------------------------------------------------------------------------------
    # Attach / remove
    def _attach(self) -> None:
        _STEERED[self.model] = self
        state = self._state
        try:
            if self.trace is None:
                targets = {m: family_of_module(m) for m in self.model.modules()}
                for module, family in targets.items():
                    if family is not None:
                        state.modules[module] = _ModuleSlot([], family)  # empty: every call takes state.default
                if not state.modules:
                    logger.warning(
                        "%s has no nn.ReLU, nn.SiLU or nn.GELU module; inline calls are steered, but pass "
                        "example_input to check that the model applies one at all",
                        type(self.model).__name__,
                    )
                self._attach_inline(scoped=False)
            elif self.trace.has_inline:
                self._attach_inline(scoped=True)
            for module in state.modules:
                self._wrap(module)
            self._hooks.append(self.model.register_forward_pre_hook(self._on_model_call))
        except BaseException:
            self.remove()
            raise
        self._attached = True

    def _wrap(self, module: nn.Module) -> None:
        state = self._state
        slot = state.modules[module]
        previous = module.__dict__.get("forward")  # an instance-level forward the user set, if any

        def forward(input: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            beta = state.default
            if slot.betas:
                beta = slot.betas[slot.calls % len(slot.betas)]
                slot.calls += 1
            family = slot.family
            if self._mode is not None:
                with self._mode.bypassed():
                    return _apply_ct(input, beta, state.c_for(family), family)
            return _apply_ct(input, beta, state.c_for(family), family)

        self._wrapped.append((module, previous))
        module.forward = forward

    def _attach_inline(self, *, scoped: bool) -> None:
        """Install the TorchFunctionMode, entered on the outermost module call and left on its exit."""
        self._mode = mode = _InlineReluMode(self._state, scoped=scoped)
        depth = [0]

        def enter(_module, _args, _path=""):
            if scoped:
                self._state.scope.append(_path)
            if depth[0] == 0:
                mode.__enter__()
            depth[0] += 1

        def leave(_module, _args, _output):
            depth[0] -= 1
            if scoped:
                self._state.scope.pop()
            if depth[0] == 0:
                mode.__exit__(None, None, None)

        modules = self.model.named_modules() if scoped else [("", self.model)]
        for path, module in modules:
            self._hooks.append(module.register_forward_pre_hook(lambda m, a, _p=path: enter(m, a, _p)))
            self._hooks.append(module.register_forward_hook(leave, always_call=True))

    def _on_model_call(self, _module: nn.Module, _args: Any) -> None:
        # A new forward pass: call counters restart (also after a forward that raised halfway).
        self._state.reset_calls()

    def remove(self) -> None:
        """Restore the model exactly: original forwards, no hooks, no mode left active."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for module, previous in reversed(self._wrapped):
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous
        self._wrapped.clear()
        self._mode = None
        if _STEERED.get(self.model) is self:
            del _STEERED[self.model]
        self._attached = False

    @property
    def active(self) -> bool:
        return self._attached

    def __enter__(self) -> SteeringHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self._attached else "removed"
        name = type(self.model).__name__
        return f"SteeringHandle({name}, granularity={self.granularity!r}, units={len(self.units)}, {state})"


def _apply_ct(x: torch.Tensor, beta: BetaLike | GroupedBeta | ChannelCT, c: float, family: Family) -> torch.Tensor:
    """One activation call, steered: K profiles on K slices, per-channel values, or one beta (fused kernels
    where they are on)."""
    if beta.__class__ is float:  # the scalar path first: one identity check, as cheap as before
        return ct_hot(x, beta, c, family)
    if isinstance(beta, (GroupedBeta, ChannelCT)):
        return beta(x, family)
    return ct_hot(x, beta, c, family)


def _as_beta(value: BetaLike | ChannelCT) -> BetaLike | ChannelCT:
    return value if isinstance(value, (torch.Tensor, ChannelCT)) else float(value)


def _channel_values(value: BetaLike | ChannelCT, c: float) -> dict[str, list[float]]:
    """A unit's values as a profile's ``channels`` entry (a float beta: one value, with the handle's c)."""
    if isinstance(value, ChannelCT):
        beta, cs = value.values()
        return {"beta": beta.detach().cpu().tolist(), "c": cs.detach().cpu().tolist()}
    return {"beta": [float(value)], "c": [float(c)]}


def _mean_c(channels: Mapping[str, Mapping[str, list[float]]]) -> float:
    values = [c for entry in channels.values() for c in entry["c"]]
    return min(1.0, max(0.0, sum(values) / len(values)))


def _mean_beta(value: BetaLike | ChannelCT) -> float:
    if isinstance(value, ChannelCT):
        return float(value.values()[0].detach().double().mean())
    return float(value)


class _InlineReluMode(TorchFunctionMode):
    """Replaces inline ReLU calls by CT; every other torch function passes straight through."""

    def __init__(self, state: _State, *, scoped: bool) -> None:
        super().__init__()
        self.state = state
        self.scoped = scoped
        self._bypass = 0

    def bypassed(self):
        return _Bypass(self)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if func not in STEERABLE_FUNCTIONS or self._bypass:
            return func(*args, **kwargs)
        family = family_of_call(func, args, kwargs)
        beta = self._beta_for_call(family)
        if beta is None or (isinstance(beta, float) and beta == 1.0 and family.name == "relu"):
            return func(*args, **kwargs)
        x = args[0] if args else kwargs["input"]
        c = self.state.c_for(family)
        if not is_inplace_call(func, args, kwargs):
            return _apply_ct(x, beta, c, family)
        # Keep in-place semantics (callers may ignore the return value); CT reads a copy so that
        # autograd does not see its saved input overwritten.
        return x.copy_(_apply_ct(x.clone(), beta, c, family))

    def _beta_for_call(self, family: Family) -> BetaLike | None:
        """This call's beta; None: a call the trace did not see, left as it is."""
        state = self.state
        if not self.scoped:
            return state.default
        key = (state.scope[-1] if state.scope else "", inline_mark(family.name))
        betas = state.inline.get(key)
        if not betas:
            if key not in state.warned:
                state.warned.add(key)
                logger.warning(
                    "inline %s in %r was not seen when the model was traced; it is left as it is",
                    family.label,
                    key[0] or "<model>",
                )
            return None
        k = state.inline_calls.get(key, 0)
        state.inline_calls[key] = k + 1
        return betas[k % len(betas)]


class _Bypass:
    def __init__(self, mode: _InlineReluMode) -> None:
        self.mode = mode

    def __enter__(self) -> None:
        self.mode._bypass += 1

    def __exit__(self, *exc_info: object) -> None:
        self.mode._bypass -= 1
