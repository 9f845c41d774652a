"""ct-tune's own models, registered by name through the registry.

Their code (``_resnets.py``) imports torchvision's blocks; the builders import it on first build only,
so listing the registry stays fast.
"""

from __future__ import annotations

from typing import Any

from ct_tune.models._registry import add

from torch import nn

DEFAULT_MODEL = "cifar_resnet_small"


def cifar_resnet_small(**kwargs: Any) -> nn.Module:
    """CIFAR ResNet, 3 stages 16/32/64 wide, 1 BasicBlock each (78k weights, the default)"""
    from ct_tune.models._resnets import cifar_resnet_small as build

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
