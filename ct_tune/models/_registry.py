"""The model registry: names that ``create_model`` builds, each registered once.

Built-ins (``_builtin.py``) and a user's ``@register_model`` builders live here; torchvision's and timm's
own models are listed by those libraries (``list_models(source=...)``), not copied in. A name is refused
when it is already registered or is a torchvision name, so one name always means one model.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from torch import nn

__all__ = ["TIMM_PREFIX", "ModelEntry", "list_models", "register_model", "registered"]

TIMM_PREFIX = "timm/"  # timm models are named timm/<timm name>, e.g. timm/resnet50.a1_in1k


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]  # builder(*, num_classes, in_channels, **kwargs) -> nn.Module
    mean: float
    std: float
    input_size: int | None
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str, *, mean: float = 0.5, std: float = 0.5, input_size: int | None = None
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``builder(*, num_classes, in_channels, **kwargs) -> nn.Module`` under ``name``.

    ``mean``/``std`` are applied to every channel by the model's ``InputSpec``; ``input_size`` None feeds the
    data at its native size. Refuses a name already registered or used by torchvision (one name, one model).
    """

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in torchvision_names():
            raise ValueError(f"{name!r} is a torchvision model name; register yours under another name")
        add(name, builder, mean=mean, std=std, input_size=input_size)
        return builder

    return decorator


def add(name: str, builder: Callable[..., nn.Module], *, mean: float, std: float, input_size: int | None) -> ModelEntry:
    """Add an entry (``register_model`` without the torchvision check, which imports torchvision: built-in
    names are checked against it by a test instead, so ``import ct_tune.models`` stays fast)."""
    if name in _REGISTRY:
        raise ValueError(f"a model named {name!r} is already registered")
    if name.startswith(TIMM_PREFIX) or ":" in name:
        raise ValueError(f"{name!r}: registered names may not start with {TIMM_PREFIX!r} or hold ':'")
    description = (inspect.getdoc(builder) or "").split("\n", 1)[0]
    entry = ModelEntry(name, builder, mean, std, input_size, description)
    _REGISTRY[name] = entry
    return entry


def registered(name: str) -> ModelEntry | None:
    return _REGISTRY.get(name)


def list_models(source: Literal["registered", "torchvision", "timm"] | None = None) -> list[str]:
    """Registered (built-in and user) names, then torchvision's classifiers, then timm's (``timm/<name>``,
    when timm is installed). ``source`` keeps one of the three."""
    names: list[str] = []
    if source in (None, "registered"):
        names += sorted(_REGISTRY)
    if source in (None, "torchvision"):
        names += torchvision_names()
    if source in (None, "timm"):
        names += [TIMM_PREFIX + name for name in timm_names()]
    return names


@lru_cache(maxsize=1)
def _torchvision_names() -> tuple[str, ...]:
    from torchvision import models

    return tuple(models.list_models(module=models))


def torchvision_names() -> list[str]:
    return list(_torchvision_names())


def timm_names() -> list[str]:
    """timm's architecture names (empty when timm is not installed: it is an optional extra)."""
    try:
        import timm
    except ImportError:
        return []
    return list(timm.list_models())
