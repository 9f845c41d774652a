"""ct-tune's own models, registered by name through the registry.

Their code (``_resnets.py``) imports torchvision's blocks; the builders import it on first build only,
so listing the registry stays fast.
"""

from __future__ import annotations

from typing import Any

from ct_tune._errors import InputError
from ct_tune.models._registry import add

from torch import nn

DEFAULT_MODEL = "cifar_resnet_small"
ACTIVATIONS = ("relu", "silu", "gelu")  # what ``cifar_resnet_small(activation=...)`` builds; relu is the default


def check_activation(*, model: str, activation: str) -> None:
    """Refuse an activation the built-in small ResNet does not build, or one asked of another model."""
    if activation not in ACTIVATIONS:
        raise InputError(f"unknown activation {activation!r}; choose one of: {', '.join(ACTIVATIONS)}")
    if activation != "relu" and model != DEFAULT_MODEL:
        raise InputError(
            f"activation {activation!r} is built into {DEFAULT_MODEL} only, not {model!r}; "
            f"use --model {DEFAULT_MODEL}, or a model of your own (package.module:function) with that activation"
        )


def cifar_resnet_small(**kwargs: Any) -> nn.Module:
    """CIFAR ResNet, 3 stages 16/32/64 wide, 1 BasicBlock each (78k weights, the default)"""
    from ct_tune.models._resnets import cifar_resnet_small as build

    check_activation(model=DEFAULT_MODEL, activation=kwargs.get("activation", "relu"))
    return build(**kwargs)


def cifar_resnet18(**kwargs: Any) -> nn.Module:
    """CIFAR-style ResNet-18: torchvision's ResNet with a 3x3 stride-1 stem, no max-pool"""
    from ct_tune.models._resnets import cifar_resnet18 as build

    return build(**kwargs)


def cifar_resnet50(**kwargs: Any) -> nn.Module:
    """CIFAR-style ResNet-50: torchvision's ResNet with a 3x3 stride-1 stem, no max-pool"""
    from ct_tune.models._resnets import cifar_resnet50 as build

    return build(**kwargs)


for _builder in (cifar_resnet_small, cifar_resnet18, cifar_resnet50):
    add(_builder.__name__, _builder, mean=0.5, std=0.5, input_size=None)
