"""A network next to how it is fed: what every ct-tune command loads a model as."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ct_tune.models._input_spec import InputSpec

import torch
from torch import Tensor, nn

__all__ = ["LoadedModel"]


@dataclass(eq=False)
class LoadedModel:
    """A network and how to feed it. ``model(x_pixels)`` is ``net(input_spec.normalize(x_pixels))``.

    ``net`` is the raw network, never wrapped: steer it, hook it, and name its units by its own module paths.
    """

    net: nn.Module
    input_spec: InputSpec
    name: str
    num_classes: int
    source: str  # "builtin" | "torchvision" | "timm" | "checkpoint:<path>" | "factory:<pkg.mod:fn>"
    in_channels: int = 3  # what the network's first layer takes (= input_spec.channels)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None  # pretrained weights the network started from, for the record
    metadata: dict[str, Any] = field(default_factory=dict)  # from a checkpoint: dataset, val_accuracy, seed, ...

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.input_spec.normalize(x))

    __call__ = forward

    def to(self, *args: Any, **kwargs: Any) -> LoadedModel:
        self.net.to(*args, **kwargs)
        return self

    def eval(self) -> LoadedModel:
        self.net.eval()
        return self

    @property
    def device(self) -> torch.device:
        tensor = next(iter(self.net.parameters()), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    def as_module(self) -> nn.Module:
        """An ``nn.Module`` that normalises then runs ``net`` (for libraries that want one module).

        Its module paths carry a ``net.`` prefix; steer ``self.net`` itself, which the wrapper shares.
        """
        return _Normalized(self.net, self.input_spec)

    def architecture(self) -> dict[str, Any]:
        """What rebuilds this network (``model``) and feeds it (``input_spec``): the part of a
        checkpoint besides the weights, also kept in Lightning checkpoints' hyper-parameters."""
        return {
            "model": {
                "name": self.name,
                "kwargs": dict(self.model_kwargs),
                "num_classes": self.num_classes,
                "in_channels": self.in_channels,
                "weights": self.weights,
            },
            "input_spec": self.input_spec.to_dict(),
        }

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "weights": self.weights,
            "model_kwargs": dict(self.model_kwargs),
            "input_spec": self.input_spec.to_dict(),
            "parameters": sum(p.numel() for p in self.net.parameters()),
        }


class _Normalized(nn.Module):
    def __init__(self, net: nn.Module, input_spec: InputSpec) -> None:
        super().__init__()
        self.net = net
        self.input_spec = input_spec

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.input_spec.normalize(x))
