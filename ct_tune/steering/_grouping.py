"""Granularities: how activation sites (ReLU, SiLU, GELU) are grouped into *units*, each with one beta.

- ``global``: one unit, ``global``.
- ``stage``:  the stages of the model's layout (``ct_tune.steering._layouts``: ResNet layers, known
  torchvision families, timm's ``feature_info``, timm's HRNet), plus ``stem`` and ``head`` where they
  hold ReLUs. A stage is named by the module holding more than half of its sites (``layer1``,
  ``features.denseblock2``), else by the range of the peer modules it spans (``Mixed_5b..Mixed_5d``,
  ``features.7..9``). Models without a layout: the top-level children that contain ReLUs, wrappers
  with a single ReLU-carrying child (``features``) looked through.
- ``block``:  within a stage, the children of its dominant module (``layer1.0``,
  ``features.denseblock2.denselayer3``); its other sites (a transition before a dense block) go to the
  child of the stage's common prefix that holds them (``features.transition1``); a stage of peers has
  the peers as blocks; ``stem`` and ``head`` are one block each. Without a layout: the children of each
  stage, looked through likewise.
- ``site``:   one unit per ReLU call (see ``ct_tune.steering.trace_sites``).
- ``custom``: units named by the user, each a module-path prefix or a list of them (``groups``);
  prefixes match whole path components and the longest one wins.

Units are ordered by their first ReLU call in the forward pass (network order). Names stay stable: a
ResNet keeps ``stem``, ``layer1``, ``layer1.0``, ..., ``head`` (saved profiles and pipelines use them).
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Mapping, Sequence

from ct_tune._errors import InputError
from ct_tune.steering._layouts import Layout, find_layout
from ct_tune.steering._sites import Site, Trace, describe

from torch import nn

__all__ = [
    "CUSTOM",
    "GRANULARITIES",
    "Groups",
    "check_granularity",
    "group_sites",
    "normalize_groups",
    "unit_families",
]

GRANULARITIES: tuple[str, ...] = ("global", "stage", "block", "site")
CUSTOM = "custom"  # units named by the user (``groups``)

Groups = Mapping[str, str | Sequence[str]]  # unit -> module-path prefix, or a list of them

Path = tuple[str, ...]


def check_granularity(granularity: str, groups: Groups | None = None) -> None:
    """A known granularity, with ``groups`` exactly when it is ``custom``."""
    if granularity == CUSTOM:
        if not groups:
            raise InputError(
                "granularity 'custom' needs groups: {unit: module-path prefix or list of prefixes}, "
                "e.g. {'early': ['relu', 'layer1'], 'late': ['layer2', 'layer3', 'layer4']}"
            )
        normalize_groups(groups)
        return
    if granularity not in GRANULARITIES:
        raise InputError(
            f"unknown granularity {granularity!r}; choose one of: {', '.join(GRANULARITIES)}, or custom with groups"
        )
    if groups:
        raise InputError(f"groups apply to granularity 'custom' only, not {granularity!r}; drop them or use custom")


def normalize_groups(groups: Groups) -> dict[str, list[str]]:
    """``{unit: [prefix, ...]}`` with every prefix a string, each given once over all units."""
    if not isinstance(groups, Mapping):
        raise InputError("groups must map unit names to a module-path prefix or a list of prefixes")
    normalized: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for unit, value in groups.items():
        prefixes = [value] if isinstance(value, str) else list(value) if isinstance(value, Sequence) else []
        if not isinstance(unit, str) or not unit or not prefixes or not all(isinstance(p, str) for p in prefixes):
            raise InputError(
                f"groups entry {unit!r}: give a non-empty unit name and a module-path prefix or a list of them"
            )
        for prefix in prefixes:
            if prefix in owner:
                raise InputError(
                    f"groups: prefix {prefix!r} is given to both {owner[prefix]!r} and {unit!r}; give it to one unit"
                )
            owner[prefix] = unit
        normalized[unit] = prefixes
    return normalized


def group_sites(model: nn.Module, trace: Trace, granularity: str, groups: Groups | None = None) -> dict[str, str]:
    """Map each site name to its unit name, in execution order (dicts keep insertion order).

    A unit holds sites of one activation family: where a group would mix families (a global unit of a
    network with ReLU and GELU), it becomes one unit per family, ``<unit>:<family>`` (``global:gelu``), so
    that one beta means one function and each unit has one own-activation baseline."""
    check_granularity(granularity, groups)
    mapping = _group(model, trace, granularity, groups)
    families: dict[str, set[str]] = {}
    for site in trace.sites:
        families.setdefault(mapping[site.name], set()).add(site.family)
    mixed = {unit for unit, found in families.items() if len(found) > 1}
    if not mixed:
        return mapping
    return {site.name: _split(mapping[site.name], site.family, mixed) for site in trace.sites}


def unit_families(trace: Trace, site_units: Mapping[str, str]) -> dict[str, str]:
    """Each unit's activation family, in network order (``group_sites`` gives a unit one family)."""
    families = {site.name: site.family for site in trace.sites}
    result: dict[str, str] = {}
    for name, unit in site_units.items():
        result.setdefault(unit, families[name])
    return result


def _split(unit: str, family: str, mixed: set[str]) -> str:
    return f"{unit}:{family}" if unit in mixed else unit


def _group(model: nn.Module, trace: Trace, granularity: str, groups: Groups | None) -> dict[str, str]:
    sites = trace.sites
    if granularity == "global":
        return {site.name: "global" for site in sites}
    if granularity == "site":
        return {site.name: site.name for site in sites}
    if granularity == CUSTOM:
        assert groups is not None
        return _group_custom(sites, normalize_groups(groups))
    layout = find_layout(model, trace)
    if layout is None:
        return _group_generic(sites, 1 if granularity == "stage" else 2)
    return _group_layout(layout, sites, blocks=granularity == "block")


# ------------------------------------------------------------------------------------------------
# Layouts: stages and blocks
def _group_layout(layout: Layout, sites: Sequence[Site], *, blocks: bool) -> dict[str, str]:
    paths = [site.path for site in sites]
    totals = Counter(prefix for path in paths for prefix in _prefixes(path))
    names = _Names()
    mapping: dict[str, str] = {}
    for group in layout.groups:
        members = range(group.start, group.end)
        if group.kind != "stage":
            unit = names.claim(group.kind)
            mapping.update((sites[i].name, unit) for i in members)
            continue
        stage_paths = paths[group.start : group.end]
        dominant = _dominant(stage_paths, totals)
        common = _common_prefix(stage_paths)
        if not blocks:
            unit = names.claim(".".join(dominant) if dominant else _peer_range(stage_paths, common))
            mapping.update((sites[i].name, unit) for i in members)
            continue
        in_stage: dict[str, str] = {}  # block name -> unit, so sites of one block share it
        for i in members:
            block = ".".join(_block_of(paths[i], dominant, common))
            if block not in in_stage:
                in_stage[block] = names.claim(block)
            mapping[sites[i].name] = in_stage[block]
    return mapping


class _Names:
    """Unit names handed out once each: a repeated name gets ``#1``, ``#2``, ... (in network order)."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def claim(self, name: str) -> str:
        unique, k = name, 0
        while unique in self.used:
            k += 1
            unique = f"{name}#{k}"
        self.used.add(unique)
        return unique


def _components(prefix: str) -> Path:
    """``"layer1.0"`` -> ``("layer1", "0")``; ``""`` (the whole model) -> ``()``."""
    return tuple(prefix.split(".")) if prefix else ()


def _prefixes(path: Path) -> list[Path]:
    return [path[:k] for k in range(1, len(path) + 1)]


def _common_prefix(paths: Sequence[Path]) -> Path:
    common = paths[0]
    for path in paths[1:]:
        k = 0
        while k < min(len(common), len(path)) and common[k] == path[k]:
            k += 1
        common = common[:k]
    return common


def _dominant(stage_paths: Sequence[Path], totals: Counter[Path]) -> Path | None:
    """The outermost module whose sites all lie in this stage and make up more than half of it."""
    inside = Counter(prefix for path in stage_paths for prefix in _prefixes(path))
    candidates = [p for p, count in inside.items() if count == totals[p] and 2 * count > len(stage_paths)]
    return min(candidates, key=lambda p: (len(p), p)) if candidates else None


def _peer_range(stage_paths: Sequence[Path], common: Path) -> str:
    """``first..last`` of the children of ``common`` the stage spans (``last`` without ``common``)."""
    peers = list(dict.fromkeys(path[: len(common) + 1] for path in stage_paths))
    first, last = peers[0], peers[-1]
    if first == last:
        return ".".join(first)
    return f"{'.'.join(first)}..{'.'.join(last[len(common) :])}"


def _block_of(path: Path, dominant: Path | None, common: Path) -> Path:
    """The dominant module's child holding the site; otherwise the child of the stage's common prefix."""
    if dominant is not None and path[: len(dominant)] == dominant:
        return path[: len(dominant) + 1]
    return path[: len(common) + 1]


# ------------------------------------------------------------------------------------------------
# Custom groups
def _group_custom(sites: Sequence[Site], groups: dict[str, list[str]]) -> dict[str, str]:
    prefixes = {_components(prefix): unit for unit, values in groups.items() for prefix in values}
    paths = [site.path for site in sites]
    for prefix, unit in prefixes.items():
        if not any(path[: len(prefix)] == prefix for path in paths):
            known = sorted({".".join(p) for path in paths for p in _prefixes(path)})
            close = difflib.get_close_matches(".".join(prefix), known, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise InputError(
                f"groups: prefix {'.'.join(prefix)!r} of unit {unit!r} matches no ReLU call (no such module, or it "
                f"applies no ReLU){hint}; use module paths as `ct-tune units --granularity site` lists them"
            )
    mapping: dict[str, str] = {}
    uncovered: list[str] = []
    for site, path in zip(sites, paths, strict=True):
        matching = [prefix for prefix in prefixes if path[: len(prefix)] == prefix]
        if not matching:
            uncovered.append(site.name)
            continue
        mapping[site.name] = prefixes[max(matching, key=len)]
    if uncovered:
        raise InputError(
            f"groups leave {len(uncovered)} ReLU call(s) in no unit: {describe(uncovered, limit=4)}; add their "
            "module paths (or a parent's) to a unit, or a unit with the prefix '' for everything else"
        )
    return mapping


# ------------------------------------------------------------------------------------------------
# No layout: top-level children
def _group_generic(sites: Sequence[Site], depth: int) -> dict[str, str]:
    paths = [site.path for site in sites]
    mapping = {}
    for site in sites:
        unit = _unit_of(site.path, paths, depth)
        mapping[site.name] = ".".join(unit)
    return mapping


def _unit_of(path: Path, paths: Sequence[Path], depth: int) -> Path:
    """Walk ``depth`` levels down from the root, looking through single-child wrappers at each level."""
    prefix: Path = ()
    for _ in range(depth):
        prefix = _look_through(prefix, paths)
        if len(path) <= len(prefix) or path[: len(prefix)] != prefix:
            return path  # the site sits above this level (e.g. an inline ReLU of the root)
        prefix = path[: len(prefix) + 1]
    return prefix


def _look_through(prefix: Path, paths: Sequence[Path]) -> Path:
    """Descend while exactly one child of ``prefix`` holds ReLU sites and no site sits at ``prefix``.

    Inline ReLUs of the wrapper itself do not stop the descent (DenseNet applies ``F.relu`` after its
    single ``features`` child); they become a unit of their own, named like ``relu()``.
    """
    while True:
        below = [p for p in paths if len(p) > len(prefix) and p[: len(prefix)] == prefix]
        children = {p[len(prefix)] for p in below if not p[len(prefix)].endswith("()")}
        at_prefix = any(p == prefix for p in paths)
        if len(children) != 1 or at_prefix:
            return prefix
        prefix = (*prefix, next(iter(children)))
