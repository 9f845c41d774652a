"""Model registry: built-in small ResNets, any torchvision classifier, checkpoint files and user factories.

A model is served as a :class:`LoadedModel`: the raw network (its own module paths, so ``layer1.0`` stays
``layer1.0`` for beta profiles) next to an :class:`InputSpec` that says what the network is fed: square side,
channels, and the mean/std applied *inside* the forward path. Data is served in pixel space ([0, 1]), so
adversarial attacks and any other pixel-space tool differentiate through the normalisation.

``create_model`` accepts, in this order:

1. ``package.module:function``: a user factory, called with ``num_classes`` / ``in_channels`` when it accepts
   them; it returns an ``nn.Module``, a ``(module, InputSpec)`` pair or a ``LoadedModel``;
2. a path to a checkpoint file (see :func:`load_checkpoint`);
3. a registered name (``list_models(source="builtin")``; add your own with :func:`register_model`);
4. a torchvision classification model name, with optional ``weights`` (``"DEFAULT"``, ``"IMAGENET1K_V1"``,
   or ``"ResNet18_Weights.IMAGENET1K_V1"``).

Built-ins normalise with mean 0.5 and std 0.5 (pixels to [-1, 1]): their stem convolution is followed by
batch norm, which absorbs any per-channel affine map of the input, so dataset statistics buy nothing and the
model stays independent of the data it is built for. torchvision models use their weights' mean/std, input
size and resize ratio (ImageNet's when built without weights).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import os
import pickle
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from ct_tune._errors import InputError
from ct_tune._version import __version__

import torch
from torch import Tensor, nn

__all__ = [
    "CHECKPOINT_FORMAT",
    "DEFAULT_MODEL",
    "InputSpec",
    "LoadedModel",
    "create_model",
    "list_models",
    "load_checkpoint",
    "register_model",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "ct-tune/checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
DEFAULT_MODEL = "cifar_resnet_small"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")

_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")


# --------------------------------------------------------------------------------------------------- input spec
@dataclass(frozen=True)
class InputSpec:
    """What a network is fed: ``normalize(pixels)`` with pixels in [0, 1], shaped (N, channels, size, size).

    ``size`` None means the data's native size. ``crop_pct`` and ``interpolation`` tell the data pipeline how
    to bring photos of varying size to ``size`` (resize the short side to ``size / crop_pct``, centre-crop).
    """

    size: int | None
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 1.0
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.channels not in (1, 3):
            raise InputError(f"input channels must be 1 or 3, not {self.channels}")
        if self.size is not None and (not isinstance(self.size, int) or self.size < 1):
            raise InputError(f"input size must be a positive integer, not {self.size!r}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise InputError(f"mean and std need {self.channels} value(s) each, got {self.mean} and {self.std}")
        if any(s <= 0 for s in self.std):
            raise InputError(f"std values must be positive, got {self.std}")
        if not 0 < self.crop_pct <= 1:
            raise InputError(f"crop_pct must be in (0, 1], not {self.crop_pct}")
        if self.interpolation not in INTERPOLATIONS:
            raise InputError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, not {self.interpolation!r}")

    @classmethod
    def uniform(cls, channels: int, value: float, spread: float, *, size: int | None = None) -> InputSpec:
        """The same mean and std on every channel (0.5/0.5 maps [0, 1] to [-1, 1])."""
        return cls(size=size, channels=channels, mean=(value,) * channels, std=(spread,) * channels)

    def normalize(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` per channel; differentiable, on x's device and dtype, for (C,H,W) or (N,C,H,W)."""
        if x.dim() < 3 or x.shape[-3] != self.channels:
            raise ValueError(
                f"expected {self.channels}-channel images (..., {self.channels}, H, W), got {tuple(x.shape)}"
            )
        mean, std = _stats(self.mean, self.std, x.device, x.dtype)
        return (x - mean) / std

    def with_size(self, size: int | None) -> InputSpec:
        return InputSpec(
            self.size if size is None else size, self.channels, self.mean, self.std, self.crop_pct, self.interpolation
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputSpec:
        known = {"size", "channels", "mean", "std", "crop_pct", "interpolation"}
        return cls(**{key: value for key, value in data.items() if key in known})


@lru_cache(maxsize=64)
def _stats(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device, dtype: torch.dtype):
    """Mean/std as broadcastable tensors, made once per device and dtype (no host copy per forward).

    Made outside inference mode even when first asked for inside it: a cached inference tensor could not be
    saved for backward, and a later gradient pass (an attack) would fail.
    """
    shape = (len(mean), 1, 1)
    with torch.inference_mode(False):
        return (
            torch.tensor(mean, dtype=dtype, device=device).view(shape),
            torch.tensor(std, dtype=dtype, device=device).view(shape),
        )


# -------------------------------------------------------------------------------------------------- loaded model
@dataclass(eq=False)
class LoadedModel:
    """A network and how to feed it. ``model(x_pixels)`` is ``net(input_spec.normalize(x_pixels))``.

    ``net`` is the raw network, never wrapped: steer it, hook it, and name its units by its own module paths.
    """

    net: nn.Module
    input_spec: InputSpec
    name: str
    num_classes: int
    source: str  # "builtin" | "torchvision" | "checkpoint:<path>" | "factory:<pkg.mod:fn>"
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


# ------------------------------------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class _Entry:
    name: str
    builder: Callable[..., nn.Module]
    mean: float
    std: float
    input_size: int | None
    description: str


_REGISTRY: dict[str, _Entry] = {}


def register_model(
    name: str, *, mean: float = 0.5, std: float = 0.5, input_size: int | None = None
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``builder(*, num_classes, in_channels, **kwargs) -> nn.Module`` under ``name``.

    ``mean``/``std`` are applied to every channel by the model's ``InputSpec``; ``input_size`` None feeds the
    data at its native size. Refuses a name already registered or used by torchvision (one name, one model).
    """

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"a model named {name!r} is already registered")
        if name in _torchvision_names():
            raise ValueError(f"{name!r} is a torchvision model name; register yours under another name")
        description = (inspect.getdoc(builder) or "").split("\n", 1)[0]
        _REGISTRY[name] = _Entry(name, builder, mean, std, input_size, description)
        return builder

    return decorator


def list_models(source: Literal["builtin", "torchvision"] | None = None) -> list[str]:
    """Registered (built-in and user) names first, then torchvision's classification models."""
    builtin = sorted(_REGISTRY) if source in (None, "builtin") else []
    return builtin + (_torchvision_names() if source in (None, "torchvision") else [])


def describe_models() -> dict[str, str]:
    """Registered names with a one-line description each."""
    return {name: entry.description for name, entry in sorted(_REGISTRY.items())}


@lru_cache(maxsize=1)
def _torchvision_names_cached() -> tuple[str, ...]:
    from torchvision import models

    return tuple(models.list_models(module=models))


def _torchvision_names() -> list[str]:
    return list(_torchvision_names_cached())


def _register_builtins() -> None:
    """Built-ins are registered by name; their module (and torchvision) is imported on first build only."""

    def lazy(function_name: str) -> Callable[..., nn.Module]:
        def build(**kwargs: Any) -> nn.Module:
            from ct_tune import _resnets

            return getattr(_resnets, function_name)(**kwargs)

        return build

    descriptions = {
        "cifar_resnet_small": "CIFAR ResNet, 3 stages 16/32/64 wide, 1 BasicBlock each (78k weights, the default)",
        "cifar_resnet18": "CIFAR-style ResNet-18: torchvision's ResNet with a 3x3 stride-1 stem, no max-pool",
        "cifar_resnet50": "CIFAR-style ResNet-50: torchvision's ResNet with a 3x3 stride-1 stem, no max-pool",
    }
    for name, description in descriptions.items():
        _REGISTRY[name] = _Entry(name, lazy(name), 0.5, 0.5, None, description)


# ---------------------------------------------------------------------------------------------------- create
def check_model_name(name_or_path: str) -> None:
    """Fail fast (before loading data) on a model that cannot be resolved.

    Built-in names, files and factories are checked without importing torchvision; other names need its list.
    """
    _kind(name_or_path)


def _kind(name_or_path: str) -> Literal["factory", "checkpoint", "builtin", "torchvision"]:
    text = str(name_or_path)
    if _FACTORY.fullmatch(text) and not os.path.exists(text):
        return "factory"
    if os.path.exists(text):
        if os.path.isdir(text):
            raise InputError(f"model path {text} is a directory; give a checkpoint file")
        return "checkpoint"
    if text in _REGISTRY:
        return "builtin"
    if text in _torchvision_names_cached():
        return "torchvision"
    if os.sep in text or text.endswith(_CHECKPOINT_SUFFIXES):
        raise InputError(f"checkpoint file {text} not found; check the path (relative paths start at {os.getcwd()})")
    valid = list_models()
    close = difflib.get_close_matches(text, valid, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise InputError(
        f"unknown model {text!r}{hint}; give a checkpoint file, a factory 'package.module:function', "
        f"a built-in ({', '.join(sorted(_REGISTRY))}) or a torchvision model ({', '.join(_torchvision_names())})"
    )


def create_model(
    name_or_path: str | os.PathLike[str],
    *,
    num_classes: int | None,
    in_channels: int = 3,
    weights: str | None = None,
    input_size: int | None = None,
    **model_kwargs: Any,
) -> LoadedModel:
    """Build (or load) a classifier for ``num_classes`` classes fed ``in_channels``-channel data.

    For a checkpoint, ``num_classes`` None accepts whatever the file holds; a different number than the
    file's head is an error (train or probe a new head instead). The network is returned in eval mode on CPU.
    """
    text = os.fspath(name_or_path)
    kind = _kind(text)
    if num_classes is None and kind != "checkpoint":
        raise InputError(f"model {text!r} needs num_classes")
    if num_classes is not None and num_classes < 1:
        raise InputError(f"num_classes must be at least 1, not {num_classes}")
    if in_channels not in (1, 3):
        raise InputError(f"in_channels must be 1 or 3, not {in_channels}")
    if weights is not None and kind not in ("torchvision",):
        raise InputError(f"weights={weights!r} applies to torchvision models only; {text!r} is a {kind} model")
    if kind == "checkpoint":
        return _check_classes(load_checkpoint(text, input_size=input_size), num_classes, text)
    if kind == "factory":
        return _from_factory(
            text, num_classes=num_classes, in_channels=in_channels, input_size=input_size, model_kwargs=model_kwargs
        )
    if kind == "builtin":
        entry = _REGISTRY[text]
        net = _call_builder(entry.builder, text, num_classes=num_classes, in_channels=in_channels, **model_kwargs)
        spec = InputSpec.uniform(in_channels, entry.mean, entry.std, size=input_size or entry.input_size)
        return _finish(net, spec, text, num_classes, "builtin", in_channels, model_kwargs, None)
    return _from_torchvision(
        text, num_classes=num_classes, weights=weights, input_size=input_size, model_kwargs=model_kwargs
    )


def _check_classes(loaded: LoadedModel, num_classes: int | None, path: str) -> LoadedModel:
    if num_classes is not None and loaded.num_classes != num_classes:
        trained_on = (loaded.metadata.get("dataset") or {}).get("name")
        where = f" (trained on {trained_on})" if trained_on else ""
        raise InputError(
            f"checkpoint {path} has a head for {loaded.num_classes} classes{where} but the data has {num_classes}; "
            "use a checkpoint trained on this dataset (ct-tune pretrain --data ...)"
        )
    return loaded


def _finish(
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


def _call_builder(builder: Callable[..., Any], label: str, **kwargs: Any) -> Any:
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


def _first_conv_channels(net: nn.Module) -> int | None:
    for module in net.modules():
        if isinstance(module, nn.Conv2d | nn.Conv1d | nn.Conv3d):
            return module.in_channels
    return None


def _from_factory(
    target: str, *, num_classes: int, in_channels: int, input_size: int | None, model_kwargs: dict[str, Any]
) -> LoadedModel:
    module_name, _, function_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise InputError(f"cannot import {module_name!r} for model factory {target!r}: {error}") from error
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise InputError(f"module {module_name!r} has no callable {function_name!r} (model factory {target!r})")
    made = _call_builder(factory, target, num_classes=num_classes, in_channels=in_channels, **model_kwargs)
    source = f"factory:{target}"
    if isinstance(made, LoadedModel):
        made.source, made.name = source, target
        made.model_kwargs = dict(model_kwargs)
        if input_size is not None:
            made.input_spec = made.input_spec.with_size(input_size)
        return made.eval()
    spec = None
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[1], InputSpec):
        made, spec = made
    if not isinstance(made, nn.Module):
        raise InputError(f"model factory {target!r} returned {type(made).__name__}, not an nn.Module")
    channels = spec.channels if spec else (_first_conv_channels(made) or in_channels)
    if spec is None:
        spec = InputSpec.uniform(channels, 0.5, 0.5)
    spec = spec.with_size(input_size)
    return _finish(made, spec, target, num_classes, source, channels, model_kwargs, None)


# ------------------------------------------------------------------------------------------------- torchvision
_AUX_MODELS = ("googlenet", "inception_v3")


def _from_torchvision(
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
            replaced = _replace_head(net, categories, num_classes)
            logger.info(
                "%s: replaced the %d-class head (%s) by a new %d-class one",
                name,
                categories,
                ", ".join(replaced),
                num_classes,
            )
    else:
        net = _call_builder(models.get_model, name, name=name, num_classes=num_classes, **kwargs)
    return _finish(net, spec, name, num_classes, "torchvision", 3, kwargs, str(weight) if weight else None)


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


def _replace_head(net: nn.Module, old: int, new: int) -> list[str]:
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


# ----------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(model: LoadedModel, path: str | os.PathLike[str], **metadata: Any) -> Path:
    """Write ``model`` in ct-tune's checkpoint format (atomically); ``metadata`` must be plain data."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "ct_tune_version": __version__,
        "torch_version": str(torch.__version__),
        **model.architecture(),
        "metadata": {**model.metadata, **metadata},
        "state_dict": {key: value.detach().cpu().clone() for key, value in model.net.state_dict().items()},
    }
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save(payload, temporary)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: str | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    input_size: int | None = None,
) -> LoadedModel:
    """Load a ct-tune checkpoint, a Lightning ``.ckpt`` or a plain state dict (read with ``weights_only=True``).

    A ct-tune checkpoint (and a Lightning checkpoint written by ``ct-tune pretrain``) names its architecture
    (``model`` is then ignored, and a ``num_classes`` other than the file's is an error); anything else needs
    ``model`` (a built-in or torchvision name, or a factory), and ``num_classes`` / ``in_channels`` default to
    what the state dict's last weight and first convolution say.
    """
    text = os.fspath(path)
    data = _read(text)
    if isinstance(data, dict) and data.get("format") == CHECKPOINT_FORMAT:
        return _check_classes(_from_ct_checkpoint(data, text, input_size), num_classes, text)
    hyper = data.get("hyper_parameters") if isinstance(data, dict) else None
    if isinstance(hyper, dict) and isinstance(hyper.get("ct_tune"), dict):
        info = hyper["ct_tune"]
        state = _find_state_dict(data, text)
        merged = {"format_version": CHECKPOINT_FORMAT_VERSION, **info, "state_dict": state}
        return _check_classes(_from_ct_checkpoint(merged, text, input_size, prefix_search=True), num_classes, text)
    state = _find_state_dict(data, text)
    if model is None:
        raise InputError(
            f"{text} is a plain state dict without its architecture; name it, e.g. --model resnet18 --checkpoint {text}"
        )
    if num_classes is None:
        num_classes = _guess_num_classes(state)
    if in_channels is None:
        in_channels = _guess_in_channels(state) or 3
    built = create_model(
        model, num_classes=num_classes, in_channels=in_channels if in_channels in (1, 3) else 3, input_size=input_size
    )
    _load_state(built.net, state, text, built.name, prefix_search=True)
    built.source = f"checkpoint:{text}"
    return built


def _read(path: str) -> Any:
    if not os.path.isfile(path):
        raise InputError(f"checkpoint file {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error):
            raise InputError(
                f"{path} holds Python objects besides tensors, which weights_only=True refuses to unpickle; "
                "save the state dict (torch.save(model.state_dict(), path))"
            ) from error
        raise InputError(f"cannot read checkpoint {path}: not a PyTorch file, or corrupt") from error
    except Exception as error:  # garbage bytes make the unpickler fail in any way (IndexError, KeyError, ...)
        reason = " ".join(str(error).split())[:160]
        raise InputError(
            f"cannot read checkpoint {path}: not a PyTorch file, or corrupt/truncated ({reason})"
        ) from error


def _from_ct_checkpoint(
    data: dict[str, Any], path: str, input_size: int | None, *, prefix_search: bool = False
) -> LoadedModel:
    if data.get("format_version", 0) > CHECKPOINT_FORMAT_VERSION:
        raise InputError(f"{path} was written by a newer ct-tune (format {data['format_version']}); upgrade ct-tune")
    try:
        info = data["model"]
        spec = InputSpec.from_dict(data["input_spec"])
        state = data["state_dict"]
        name, num_classes, in_channels = info["name"], int(info["num_classes"]), int(info["in_channels"])
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{path} is a damaged ct-tune checkpoint (missing {error}); write it again") from error
    built = create_model(name, num_classes=num_classes, in_channels=in_channels, **dict(info.get("kwargs") or {}))
    _load_state(built.net, state, path, name, prefix_search=prefix_search)
    built.input_spec = spec.with_size(input_size)
    built.source = f"checkpoint:{path}"
    built.weights = info.get("weights")
    built.metadata = dict(data.get("metadata") or {})
    return built


def _find_state_dict(data: Any, path: str) -> dict[str, Tensor]:
    """The tensors of a state dict, whether bare or under a usual key (state_dict, model_state_dict, model, net)."""
    if isinstance(data, nn.Module):  # pragma: no cover - weights_only=True never returns modules
        return data.state_dict()
    if isinstance(data, dict):
        if data and all(isinstance(value, Tensor) for value in data.values()):
            return data
        for key in ("state_dict", "model_state_dict", "model", "net", "state"):
            inner = data.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                return inner
    raise InputError(f"{path} holds no state dict (a mapping of parameter names to tensors)")


def _load_state(net: nn.Module, state: Mapping[str, Tensor], path: str, name: str, *, prefix_search: bool) -> None:
    """Load strictly; find a wrapper prefix (``module.``, ``net.``, ``model.``) if needed; explain a mismatch."""
    expected = net.state_dict()
    state = dict(state)
    if prefix_search and set(state) != set(expected):
        for prefix in sorted({key.split(".", 1)[0] + "." for key in state if "." in key}):
            stripped = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
            if set(stripped) == set(expected):
                state = stripped
                break
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    shapes = [key for key in expected if key in state and tuple(state[key].shape) != tuple(expected[key].shape)]
    if missing or unexpected or shapes:
        details = []
        if shapes:
            key = shapes[0]
            details.append(
                f"{len(shapes)} tensor(s) differ in shape, first {key} {list(state[key].shape)} in the file "
                f"vs {list(expected[key].shape)} in the model"
            )
        if missing:
            details.append(f"{len(missing)} missing (first {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (first {unexpected[0]})")
        head = _head_hint(state, expected, shapes)
        raise InputError(f"checkpoint {path} does not fit model {name}: {'; '.join(details)}{head}")
    net.load_state_dict(state, strict=True)


def _head_hint(state: Mapping[str, Tensor], expected: Mapping[str, Tensor], shapes: list[str]) -> str:
    key = _last_weight_key(expected)
    if key in shapes:
        return f" (the file's head has {state[key].shape[0]} classes, the model {expected[key].shape[0]})"
    return ""


def _last_weight_key(state: Mapping[str, Tensor]) -> str | None:
    keys = [key for key, value in state.items() if key.endswith("weight") and value.dim() >= 2]
    return keys[-1] if keys else None


def _guess_num_classes(state: Mapping[str, Tensor]) -> int:
    key = _last_weight_key(state)
    if key is None:
        raise InputError("cannot tell the number of classes from the state dict; pass num_classes")
    return int(state[key].shape[0])


def _guess_in_channels(state: Mapping[str, Tensor]) -> int | None:
    for value in state.values():
        if value.dim() == 4:
            return int(value.shape[1])
    return None


_register_builtins()
