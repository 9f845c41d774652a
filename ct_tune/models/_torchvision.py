"""torchvision classifiers by name, with their weights enums (``DEFAULT``, ``IMAGENET1K_V1``, ...).

The input spec comes from the weights' own transforms (mean/std, crop and resize sizes, interpolation);
ImageNet's when built without weights. A head for another number of classes replaces the pretrained one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ct_tune._errors import InputError
from ct_tune.models._build import call_builder, finish, replace_head
from ct_tune.models._input_spec import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, InputSpec
from ct_tune.models._loaded import LoadedModel

import torch
from torch import nn

__all__ = ["from_torchvision"]

logger = logging.getLogger(__name__)

_AUX_MODELS = ("googlenet", "inception_v3")


def from_torchvision(
    name: str, *, num_classes: int, weights: str | None, input_size: int | None, model_kwargs: dict[str, Any]
) -> LoadedModel:
    from torchvision import models

    kwargs = dict(model_kwargs)
    if name in _AUX_MODELS:
        kwargs.setdefault("aux_logits", False)  # ct-tune never trains auxiliary heads; keeps checkpoints rebuildable
        if weights is None:
            kwargs.setdefault("init_weights", True)
    enum = _weights_enum(name)
    weight = _resolve_weights(name, weights, enum)
    reference = weight or (enum.DEFAULT if enum is not None else None)  # sizes and stats, nothing downloaded
    spec = _torchvision_spec(reference, input_size)
    if weight is not None:
        min_size = weight.meta.get("min_size")
        if min_size and spec.size is not None and spec.size < max(min_size):
            raise InputError(f"{name} with {weight} needs inputs of at least {max(min_size)} pixels, not {spec.size}")
        net = _download_weights(name, weight, kwargs)
        categories = len(weight.meta.get("categories") or [])
        if categories and categories != num_classes:
            replaced = replace_head(net, categories, num_classes)
            logger.info(
                "%s: replaced the %d-class head (%s) by a new %d-class one",
                name,
                categories,
                ", ".join(replaced),
                num_classes,
            )
    else:
        net = call_builder(models.get_model, name, name=name, num_classes=num_classes, **kwargs)
    return finish(net, spec, name, num_classes, "torchvision", 3, kwargs, str(weight) if weight else None)


def _weights_enum(name: str) -> Any:
    from torchvision import models

    try:
        return models.get_model_weights(name)
    except (ValueError, KeyError):
        return None


def _resolve_weights(name: str, weights: str | None, enum: Any) -> Any:
    if weights is None or weights.lower() == "none":
        return None
    if enum is None:
        raise InputError(f"torchvision has no pretrained weights for {name}; drop --weights")
    available = [member for member in enum.__members__ if member != "DEFAULT"]
    key = weights.split(".", 1)[1] if weights.startswith(enum.__name__ + ".") else weights
    if key in enum.__members__:
        return enum[key]
    raise InputError(f"unknown weights {weights!r} for {name}; choose DEFAULT or one of: {', '.join(available)}")


def _torchvision_spec(weight: Any, input_size: int | None) -> InputSpec:
    crop, resize, mean, std, interpolation = 224, 256, IMAGENET_MEAN, IMAGENET_STD, "bilinear"
    if weight is not None:
        transforms = weight.transforms()
        crop = int(transforms.crop_size[0])
        resize = int(transforms.resize_size[0])
        mean, std = tuple(transforms.mean), tuple(transforms.std)
        interpolation = str(getattr(transforms.interpolation, "value", "bilinear"))
    if interpolation not in INTERPOLATIONS:
        interpolation = "bilinear"
    return InputSpec(input_size or crop, 3, mean, std, crop_pct=min(1.0, crop / resize), interpolation=interpolation)


def _download_weights(name: str, weight: Any, kwargs: dict[str, Any]) -> nn.Module:
    from torchvision import models

    try:
        return models.get_model(name, weights=weight, **kwargs)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a truncated download a RuntimeError
        hub = Path(torch.hub.get_dir()) / "checkpoints" / Path(weight.url).name
        reason = " ".join(str(error).split())[:200]
        raise InputError(
            f"cannot get the weights {weight} for {name} ({reason}); put {Path(weight.url).name} at {hub} "
            "(download it on a machine with network), or pass a weights file with --checkpoint"
        ) from error
