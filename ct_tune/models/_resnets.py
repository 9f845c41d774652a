"""CIFAR-style ResNets for small images (3x3 stride-1 stem, no max-pool), built from torchvision's blocks.

Attribute names follow torchvision's ResNet (``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1``..``layerN``,
``avgpool``, ``fc``), so ct-tune's unit grouping (``stem``, ``layer1``, ``layer1.0``, ...) and anything written
for torchvision ResNets work unchanged. ``fc`` is the only classifier layer: its input is the feature vector
that linear probes read.

``activation`` picks the nonlinearity of ``cifar_resnet_small``: ``relu`` (torchvision's ``nn.ReLU`` modules
named ``relu``), ``silu`` or ``gelu`` (``nn.SiLU`` / exact ``nn.GELU`` modules at the same places, named
``act`` as in timm, so a site name never calls a SiLU a ReLU). The weights and their names are the same for
all three: the activations hold none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet, conv1x1

__all__ = ["CifarResNet", "cifar_resnet18", "cifar_resnet50", "cifar_resnet_small"]

# activation -> the module that applies it (a fresh one per place, as torchvision builds its ReLUs); the
# names are ``ct_tune.models.ACTIVATIONS``
_ACTIVATION_MODULES: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "silu": nn.SiLU,
    "gelu": nn.GELU,  # exact (erf), not the tanh approximation
}


class _ActBasicBlock(BasicBlock):
    """torchvision's BasicBlock with another activation, named ``act`` (BasicBlock's forward calls ``relu``)."""

    def __init__(self, *args: object, act: nn.Module, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        del self.relu
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + identity)


class CifarResNet(nn.Module):
    """A ResNet with any number of stages and widths; torchvision's blocks and module names.

    The first stage keeps the input resolution, every later stage halves it (stride 2), as in He et al.'s
    CIFAR ResNets. Works for inputs from 8x8 (scikit-learn digits) upwards.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        widths: Sequence[int],
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        zero_init_residual: bool = True,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if len(layers) != len(widths) or not layers:
            raise ValueError("layers and widths need one entry per stage")
        if activation not in _ACTIVATION_MODULES:
            raise ValueError(f"unknown activation {activation!r}; choose one of: {', '.join(_ACTIVATION_MODULES)}")
        if activation != "relu" and block is not BasicBlock:
            raise ValueError(f"activation {activation!r} is built for BasicBlock stages only")
        self.activation = activation
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.add_module(self._act_name, _ACTIVATION_MODULES[activation]())
        self.maxpool = nn.Identity()
        self.num_stages = len(layers)
        for index, (blocks, width) in enumerate(zip(layers, widths, strict=True)):
            stride = 1 if index == 0 else 2
            self.add_module(f"layer{index + 1}", self._make_layer(block, width, blocks, stride))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1] * block.expansion, num_classes)
        _init_like_torchvision(self, zero_init_residual=zero_init_residual)

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        modules = [self._block(block, self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        modules += [self._block(block, self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*modules)

    @property
    def _act_name(self) -> str:
        """``relu`` for ReLU (torchvision's name, kept by every saved ReLU site name), ``act`` otherwise."""
        return "relu" if self.activation == "relu" else "act"

    def _block(self, block: type[BasicBlock | Bottleneck], *args: object) -> nn.Module:
        if self.activation == "relu":
            return block(*args)  # type: ignore[arg-type]
        return _ActBasicBlock(*args, act=_ACTIVATION_MODULES[self.activation]())

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(getattr(self, self._act_name)(self.bn1(self.conv1(x))))
        for index in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{index}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _init_like_torchvision(model: nn.Module, *, zero_init_residual: bool) -> None:
    """torchvision's ResNet initialisation (Kaiming fan-out convs, unit BN, zeroed last BN per block)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.constant_(module.weight, 1)
            nn.init.constant_(module.bias, 0)
    if zero_init_residual:
        for module in model.modules():
            if isinstance(module, Bottleneck) and module.bn3.weight is not None:
                nn.init.constant_(module.bn3.weight, 0)
            elif isinstance(module, BasicBlock) and module.bn2.weight is not None:
                nn.init.constant_(module.bn2.weight, 0)


def cifar_resnet_small(
    *,
    num_classes: int,
    in_channels: int,
    widths: Sequence[int] = (16, 32, 64),
    blocks: int = 1,
    activation: str = "relu",
) -> CifarResNet:
    """Three stages of ``blocks`` BasicBlocks (16/32/64 wide): ~75k weights, trains on a CPU in seconds."""
    return CifarResNet(
        BasicBlock,
        [blocks] * len(widths),
        widths,
        num_classes=num_classes,
        in_channels=in_channels,
        activation=activation,
    )


def _cifar_torchvision_resnet(
    block: type[BasicBlock | Bottleneck], layers: list[int], *, num_classes: int, in_channels: int
) -> ResNet:
    """torchvision's own ResNet class with the CIFAR stem: 3x3 stride-1 ``conv1`` and ``maxpool`` = Identity."""
    model = ResNet(block, layers, num_classes=num_classes, zero_init_residual=True)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


def cifar_resnet18(*, num_classes: int, in_channels: int) -> ResNet:
    """ResNet-18 for 32x32 images (11M weights): torchvision's ResNet with the CIFAR stem."""
    return _cifar_torchvision_resnet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, in_channels=in_channels)


def cifar_resnet50(*, num_classes: int, in_channels: int) -> ResNet:
    """ResNet-50 for 32x32 images (23M weights): torchvision's ResNet with the CIFAR stem."""
    return _cifar_torchvision_resnet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, in_channels=in_channels)
