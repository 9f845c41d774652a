"""Layouts: where a network's stages begin and end, read from its real structure.

A layout cuts the ReLU sites of a trace (in execution order) into consecutive groups: a ``stem``, the
stages, a ``head`` (each only if it holds sites). Rules, tried in order:

a. ResNets: children ``layer1``..``layerN`` (N >= 2) run back to back (ct-tune's CIFAR ResNets,
   torchvision ResNet/ResNeXt/Wide-ResNet, timm's ResNet family, models written like them).
b. torchvision families, known by class: DenseNet (its dense blocks), VGG and AlexNet (the conv stacks
   between max-pools), RegNet (``trunk_output.blockN``), GoogLeNet (runs of inception modules between
   max-pools), Inception3 (``Mixed_5*``, ``Mixed_6*``, ``Mixed_7*``), SqueezeNet (runs of Fire modules
   between max-pools), ShuffleNetV2 (``stage2..4``), MNASNet (its six stacks), MobileNetV2/V3 (a new
   stage at each block that lowers the resolution, where torchvision's detection backbones cut them),
   EfficientNet and Swin (the plain ``nn.Sequential`` children of ``features``).
c. timm models: ``feature_info`` names the module each stage's output is tapped at (used when every
   entry names a real submodule). In networks with SiLU or GELU sites, taps that are numbered children of
   one container (``blocks.0``, ``stages.1``, ``layers.2``) are stages themselves, not a stem followed by
   stages: the stem is what runs before the first (ConvNeXt, Swin and ViT have no stem activation); an
   isotropic run of taps (a ViT's ``blocks.0``..``blocks.11``, all at one resolution) is one stage; where
   timm taps only the last of several stage containers at each resolution (EfficientNet's ``blocks.0``..
   ``blocks.6``, plain ``nn.Sequential`` each) every container is a stage.
d. timm's HighResolutionNet, whose ``feature_info`` names no real module: ``layer1``, ``stage2..4``.

ReLU-only networks keep the rules they had before SiLU and GELU were steered (c's refinement, and the
block look-through of ``_grouping``, are off for them): saved profiles and studies name their units.

No rule fits: no layout (``group_sites`` then uses top-level children).

Stage modules (a, b, d): the stem is what runs before the first stage module is entered; a stage ends
when its last module first returns, so sites between two stages (DenseNet and HRNet transitions) join
the stage they feed; the head is what runs after the last stage. Taps (c): stage i ends when tap i
first returns (timm's own meaning of a stage); the first group is the stem when timm marks it as
already reducing the resolution (reduction >= 2).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from ct_tune.steering._sites import Trace

from torch import nn

__all__ = ["Group", "Layout", "find_layout", "refined"]

_LAYER = re.compile(r"layer(\d+)")

StagesOf = Callable[[nn.Module], list[list[str]]]  # a model -> its stages, each a list of module paths


@dataclass(frozen=True)
class Group:
    """Sites ``start:end`` of a trace: the stem, one stage, or the head."""

    kind: Literal["stem", "stage", "head"]
    start: int
    end: int


@dataclass(frozen=True)
class Layout:
    rule: str  # which rule found it, for messages and `ct-tune units`
    groups: tuple[Group, ...]


def find_layout(model: nn.Module, trace: Trace) -> Layout | None:
    """The layout of the first rule that fits ``model`` (see the module docstring), or None."""
    for rule, groups in _candidates(model, trace.spans, len(trace.sites), refine=refined(trace)):
        if groups:
            return Layout(rule, groups)
    return None


def refined(trace: Trace) -> bool:
    """Whether the rules refined for SiLU and GELU networks apply: off for ReLU-only networks, whose unit
    names saved profiles and studies already use."""
    return any(site.family != "relu" for site in trace.sites)


def _candidates(
    model: nn.Module, spans: Mapping[str, tuple[int, int]], n: int, *, refine: bool
) -> Iterator[tuple[str, tuple[Group, ...] | None]]:
    """Each rule's layout, in order, computed only when asked for (None: the rule's modules did not run)."""
    layers = _resnet_layers(model, spans)
    if layers:
        yield "ResNet layers", _from_stages([[layer] for layer in layers], spans, n)
    known = _known_class(model, _TORCHVISION)
    if known is not None:
        yield f"torchvision {known[0]}", _from_stages(known[1](model), spans, n)
    taps = _timm_taps(model)
    if taps is not None:
        stages = _numbered_stages(model, *taps) if refine else None
        if stages is not None:
            yield "timm feature_info", _from_stages(stages, spans, n)
        else:
            yield "timm feature_info", _from_taps(taps[0], taps[1][0] >= 2, spans, n)
    known = _known_class(model, _TIMM)
    if known is not None:
        yield f"timm {known[0]}", _from_stages(known[1](model), spans, n)


def _known_class(model: nn.Module, table: Mapping[str, StagesOf]) -> tuple[str, StagesOf] | None:
    """The table entry of the model's class or of a base class (matched by qualified name: no imports)."""
    for cls in type(model).__mro__:
        stages_of = table.get(f"{cls.__module__}.{cls.__qualname__}")
        if stages_of is not None:
            return cls.__qualname__, stages_of
    return None


def _from_stages(stages: list[list[str]], spans: Mapping[str, tuple[int, int]], n: int) -> tuple[Group, ...] | None:
    """Stem before the first stage module is entered; stage i ends when its last module returns."""
    if not stages or any(path not in spans for stage in stages for path in stage):
        return None  # a stage module that never ran: the rule does not describe this forward pass
    start = spans[stages[0][0]][0]
    groups = [Group("stem", 0, start)]
    for stage in stages:
        end = spans[stage[-1]][1]
        if end < start:
            return None
        groups.append(Group("stage", start, end))
        start = end
    groups.append(Group("head", start, n))
    return tuple(group for group in groups if group.end > group.start)


def _from_taps(
    taps: list[str], first_is_stem: bool, spans: Mapping[str, tuple[int, int]], n: int
) -> tuple[Group, ...] | None:
    """Stage i holds the sites run after tap i-1 returned, up to tap i returning; then the head."""
    if not taps or any(tap not in spans for tap in taps):
        return None
    groups, start = [], 0
    for index, tap in enumerate(taps):
        end = spans[tap][1]
        if end < start:
            return None
        groups.append(Group("stem" if index == 0 and first_is_stem else "stage", start, end))
        start = end
    groups.append(Group("head", start, n))
    return tuple(group for group in groups if group.end > group.start)


# ------------------------------------------------------------------------------------------------
# a. ResNets
def _resnet_layers(model: nn.Module, spans: Mapping[str, tuple[int, int]]) -> list[str]:
    """``layer1``..``layerN`` (N >= 2) when they run back to back, else nothing.

    N >= 2 keeps out timm's HighResolutionNet, whose only ``layer1`` is followed by ``stage2``..``4``.
    """
    numbers = sorted(int(m.group(1)) for name, _ in model.named_children() if (m := _LAYER.fullmatch(name)))
    if len(numbers) < 2 or numbers != list(range(1, len(numbers) + 1)):
        return []
    layers = [f"layer{number}" for number in numbers]
    if any(layer not in spans for layer in layers):
        return []
    back_to_back = all(spans[b][0] == spans[a][1] for a, b in itertools.pairwise(layers))
    return layers if back_to_back else []


# ------------------------------------------------------------------------------------------------
# b. torchvision families and d. timm's HighResolutionNet, known by class
def _runs(model: nn.Module, parent: str, key: Callable[[str, nn.Module], Hashable | None]) -> list[list[str]]:
    """Consecutive children of ``parent`` with the same non-None ``key``, as lists of module paths."""
    runs: list[list[str]] = []
    previous: Hashable | None = None
    for name, child in model.get_submodule(parent).named_children():
        current = key(name, child)
        if current is not None:
            if current != previous or not runs:
                runs.append([])
            runs[-1].append(f"{parent}.{name}" if parent else name)
        previous = current
    return runs


def _between_pools(model: nn.Module) -> list[list[str]]:
    """VGG, AlexNet: the layers of ``features`` between max-pools (each pool closes a stage)."""
    return _runs(model, "features", lambda _name, child: None if isinstance(child, nn.MaxPool2d) else "conv")


def _named_children(parent: str, pattern: str) -> StagesOf:
    """One stage per child of ``parent`` whose name matches ``pattern``."""

    def stages(model: nn.Module) -> list[list[str]]:
        container = model.get_submodule(parent) if parent else model
        prefix = f"{parent}." if parent else ""
        return [[prefix + name] for name, _ in container.named_children() if re.fullmatch(pattern, name)]

    return stages


def _of_class(parent: str, class_name: str) -> StagesOf:
    """Runs of ``parent``'s children of one class (inception or Fire modules), split by anything else."""
    return lambda model: _runs(model, parent, lambda _name, child: type(child).__name__ == class_name or None)


def _inception3(model: nn.Module) -> list[list[str]]:
    """Mixed_5b..5d, Mixed_6a..6e, Mixed_7a..7c: one stage per resolution (6a and 7a reduce it)."""
    return _runs(model, "", lambda name, _child: name[:7] if name.startswith("Mixed_") else None)


def _mobilenet(model: nn.Module) -> list[list[str]]:
    """Inverted-residual blocks of ``features``; a block that lowers the resolution starts a stage.

    ``_is_cn`` is torchvision's own mark for those blocks (its detection backbones cut stages there).
    """
    count = [0]

    def key(_name: str, child: nn.Module) -> int | None:
        if type(child).__name__ != "InvertedResidual":
            return None  # the first and last convolutions: stem and head
        count[0] += bool(getattr(child, "_is_cn", False))
        return count[0]

    return _runs(model, "features", key)


def _mnasnet(model: nn.Module) -> list[list[str]]:
    """The six stacks of inverted residuals (``layers.8``..``layers.13``, the Sequential children)."""
    children = model.get_submodule("layers").named_children()
    return [[f"layers.{name}"] for name, child in children if isinstance(child, nn.Sequential)]


def _plain_sequentials(model: nn.Module) -> list[list[str]]:
    """EfficientNet, Swin: the plain ``nn.Sequential`` children of ``features`` are the stages.

    The stem and head convolutions (``Conv2dNormActivation``, a Sequential subclass) and Swin's patch
    merging layers are not; Swin's patch embedding is, and holds no activation.
    """
    children = model.get_submodule("features").named_children()
    return [[f"features.{name}"] for name, child in children if type(child) is nn.Sequential]


_TORCHVISION: dict[str, StagesOf] = {
    "torchvision.models.densenet.DenseNet": _named_children("features", r"denseblock\d+"),
    "torchvision.models.vgg.VGG": _between_pools,
    "torchvision.models.alexnet.AlexNet": _between_pools,
    "torchvision.models.regnet.RegNet": _named_children("trunk_output", r"block\d+"),
    "torchvision.models.googlenet.GoogLeNet": _of_class("", "Inception"),
    "torchvision.models.inception.Inception3": _inception3,
    "torchvision.models.squeezenet.SqueezeNet": _of_class("features", "Fire"),
    "torchvision.models.shufflenetv2.ShuffleNetV2": _named_children("", r"stage\d+"),
    "torchvision.models.mnasnet.MNASNet": _mnasnet,
    "torchvision.models.mobilenetv2.MobileNetV2": _mobilenet,
    "torchvision.models.mobilenetv3.MobileNetV3": _mobilenet,
    "torchvision.models.efficientnet.EfficientNet": _plain_sequentials,
    "torchvision.models.swin_transformer.SwinTransformer": _plain_sequentials,
}
_TIMM: dict[str, StagesOf] = {
    "timm.models.hrnet.HighResolutionNet": lambda _model: [["layer1"], ["stage2"], ["stage3"], ["stage4"]],
}


# ------------------------------------------------------------------------------------------------
# c. timm's feature_info
def _timm_taps(model: nn.Module) -> tuple[list[str], list[int]] | None:
    """The tapped module paths and their reductions, when every entry names a module."""
    info = getattr(model, "feature_info", None)
    if not isinstance(info, list) or not info:
        return None
    if not all(isinstance(entry, dict) and isinstance(entry.get("module"), str) for entry in info):
        return None
    paths = [entry["module"] for entry in info]
    for path in paths:
        try:
            model.get_submodule(path)
        except AttributeError:
            return None
    return paths, [entry.get("reduction") or 1 for entry in info]


def _numbered_parent(path: str) -> str | None:
    """``"blocks.3"`` -> ``"blocks"``, ``"3"`` -> ``""``; None when the last component is not a number."""
    parent, _, last = path.rpartition(".")
    return parent if last.isdigit() else None


def _numbered_stages(model: nn.Module, taps: list[str], reductions: list[int]) -> list[list[str]] | None:
    """Stages from leading taps that are numbered children of one container (see c. in the module docstring).

    Later taps elsewhere (a final norm or convolution) run after the last stage: the head.
    """
    parent = _numbered_parent(taps[0])
    run = list(itertools.takewhile(lambda tap: _numbered_parent(tap) == parent, taps))
    if parent is None or len(run) < 2:
        return None
    container = model.get_submodule(parent) if parent else model
    names = [name for name, _ in container.named_children()]
    indices = [names.index(tap.rpartition(".")[2]) for tap in run]
    if indices != sorted(set(indices)):
        return None
    prefix = f"{parent}." if parent else ""
    spanned = names[indices[0] : indices[-1] + 1]
    if all(type(container.get_submodule(name)) is nn.Sequential for name in spanned):
        return [[prefix + name] for name in spanned]
    stages: list[list[str]] = []
    after, resolution = indices[0], 0
    for index, reduction in zip(indices, reductions, strict=False):
        members = [prefix + name for name in names[after : index + 1]]
        if reduction == resolution:
            stages[-1] += members  # the same resolution as the previous tap: one isotropic stage
        else:
            stages.append(members)
        after, resolution = index + 1, reduction
    return stages
