"""Granularities: how ReLU sites are grouped into *units*, each with one beta.

- ``global``: one unit, ``global``.
- ``stage``:  ResNets (children ``layer1``..``layerN``): ``stem``, ``layer1``, ..., ``layerN``
  (and ``head`` for ReLUs after the last layer, if any). Other models: the top-level children that
  contain ReLUs, named by module path; wrappers with a single ReLU-carrying child (DenseNet's
  ``features``) are looked through.
- ``block``:  ResNets: ``stem``, ``layer1.0``, ``layer1.1``, ... (one per residual block, its
  post-addition ReLU included). Other models: the children of each stage, looked through likewise.
- ``site``:   one unit per ReLU call (see ``ct_tune.steering.trace_sites``).

Units are ordered by their first ReLU call in the forward pass (network order).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ct_tune._errors import InputError
from ct_tune.steering._sites import INLINE_MARK, Site

from torch import nn

__all__ = ["GRANULARITIES", "check_granularity", "group_sites"]

GRANULARITIES: tuple[str, ...] = ("global", "stage", "block", "site")

_RESNET_LAYER = re.compile(r"layer(\d+)")


def check_granularity(granularity: str) -> None:
    if granularity not in GRANULARITIES:
        raise InputError(f"unknown granularity {granularity!r}; choose one of: {', '.join(GRANULARITIES)}")


def group_sites(model: nn.Module, sites: Sequence[Site], granularity: str) -> dict[str, str]:
    """Map each site name to its unit name, in execution order (dicts keep insertion order)."""
    check_granularity(granularity)
    if granularity == "global":
        return {site.name: "global" for site in sites}
    if granularity == "site":
        return {site.name: site.name for site in sites}
    depth = 1 if granularity == "stage" else 2
    if _is_resnet(model):
        return _group_resnet(sites, depth)
    return _group_generic(sites, depth)


def _is_resnet(model: nn.Module) -> bool:
    """torchvision ResNet/ResNeXt/Wide-ResNet and ct-tune's CIFAR ResNets: children layer1..layerN."""
    layers = sorted(int(m.group(1)) for name, _ in model.named_children() if (m := _RESNET_LAYER.fullmatch(name)))
    return bool(layers) and layers == list(range(1, len(layers) + 1))


def _group_resnet(sites: Sequence[Site], depth: int) -> dict[str, str]:
    in_layers = [i for i, site in enumerate(sites) if _RESNET_LAYER.fullmatch(site.path[0] if site.path else "")]
    first_layer_call = in_layers[0] if in_layers else len(sites)
    mapping = {}
    for index, site in enumerate(sites):
        path = site.path
        if path and _RESNET_LAYER.fullmatch(path[0]):
            mapping[site.name] = ".".join(path[:depth])
        else:
            mapping[site.name] = "stem" if index < first_layer_call else "head"
    return mapping


def _group_generic(sites: Sequence[Site], depth: int) -> dict[str, str]:
    paths = [site.path for site in sites]
    mapping = {}
    for site in sites:
        unit = _unit_of(site.path, paths, depth)
        mapping[site.name] = ".".join(unit)
    return mapping


def _unit_of(path: tuple[str, ...], paths: Sequence[tuple[str, ...]], depth: int) -> tuple[str, ...]:
    """Walk ``depth`` levels down from the root, looking through single-child wrappers at each level."""
    prefix: tuple[str, ...] = ()
    for _ in range(depth):
        prefix = _look_through(prefix, paths)
        if len(path) <= len(prefix) or path[: len(prefix)] != prefix:
            return path  # the site sits above this level (e.g. an inline ReLU of the root)
        prefix = path[: len(prefix) + 1]
    return prefix


def _look_through(prefix: tuple[str, ...], paths: Sequence[tuple[str, ...]]) -> tuple[str, ...]:
    """Descend while exactly one child of ``prefix`` holds ReLU sites and no site sits at ``prefix``.

    Inline ReLUs of the wrapper itself do not stop the descent (DenseNet applies ``F.relu`` after its
    single ``features`` child); they become a unit of their own, named like ``relu()``.
    """
    while True:
        below = [p for p in paths if len(p) > len(prefix) and p[: len(prefix)] == prefix]
        children = {p[len(prefix)] for p in below if p[len(prefix)] != INLINE_MARK}
        at_prefix = any(p == prefix for p in paths)
        if len(children) != 1 or at_prefix:
            return prefix
        prefix = (*prefix, next(iter(children)))
