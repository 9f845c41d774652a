"""What every model adapter shares: calling a builder with the arguments it takes, and the finished
``LoadedModel`` (eval mode, CPU)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ct_tune._errors import InputError
from ct_tune.models._input_spec import InputSpec
from ct_tune.models._loaded import LoadedModel

from torch import nn


def finish(
    net: nn.Module,
    spec: InputSpec,
    name: str,
    num_classes: int,
    source: str,
    in_channels: int,
    model_kwargs: dict[str, Any],
    weights: str | None,
) -> LoadedModel:
    net.eval()
    return LoadedModel(net, spec, name, num_classes, source, in_channels, dict(model_kwargs), weights)


def call_builder(builder: Callable[..., Any], label: str, **kwargs: Any) -> Any:
    """Call a builder with the keyword arguments its signature takes (all of them if it takes ``**kwargs``)."""
    try:
        parameters = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        parameters = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    extra = [key for key in kwargs if key not in ("num_classes", "in_channels") and key not in parameters]
    if extra and not takes_any:
        raise InputError(f"model {label!r} takes no argument(s) {', '.join(extra)}; valid: {', '.join(parameters)}")
    accepted = kwargs if takes_any else {key: value for key, value in kwargs.items() if key in parameters}
    try:
        return builder(**accepted)
    except TypeError as error:
        raise InputError(f"cannot build model {label!r}: {error}") from error


def first_conv_channels(net: nn.Module) -> int | None:
    for module in net.modules():
        if isinstance(module, nn.Conv2d | nn.Conv1d | nn.Conv3d):
            return module.in_channels
    return None


def replace_head(net: nn.Module, old: int, new: int) -> list[str]:
    """Swap every output layer with ``old`` outputs (Linear or 1x1 Conv2d) for a fresh one with ``new``."""
    replaced = []
    for path, module in list(net.named_modules()):
        if isinstance(module, nn.Linear) and module.out_features == old:
            fresh: nn.Module = nn.Linear(module.in_features, new, bias=module.bias is not None)
        elif isinstance(module, nn.Conv2d) and module.out_channels == old and module.kernel_size == (1, 1):
            fresh = nn.Conv2d(module.in_channels, new, 1, bias=module.bias is not None)
        else:
            continue
        parent_path, _, attr = path.rpartition(".")
        setattr(net.get_submodule(parent_path) if parent_path else net, attr, fresh)
        replaced.append(path)
    if not replaced:
        raise InputError(f"cannot find the {old}-class output layer to replace; build without weights")
    return replaced
