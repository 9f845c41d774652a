"""``create_model``: one entry point for every way a model is named, in this order:

1. ``package.module:function``: a user factory, called with ``num_classes`` / ``in_channels`` when it accepts
   them; it returns an ``nn.Module``, a ``(module, InputSpec)`` pair or a ``LoadedModel``;
2. a path to a checkpoint file (see :func:`load_checkpoint`);
3. a registered name (``list_models("registered")``; add your own with ``register_model``);
4. a torchvision classification model name, with optional ``weights`` (``"DEFAULT"``, ``"IMAGENET1K_V1"``,
   or ``"ResNet18_Weights.IMAGENET1K_V1"``);
5. ``timm/<name>`` (``timm/resnet50.a1_in1k``), with ``pretrained`` as timm spells it (the optional extra
   ``ct-tune[timm]``).

Built-ins normalise with mean 0.5 and std 0.5 (pixels to [-1, 1]): their stem convolution is followed by
batch norm, which absorbs any per-channel affine map of the input, so dataset statistics buy nothing and the
model stays independent of the data it is built for.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
from typing import Any, Literal

import ct_tune.models._builtin  # noqa: F401  (registers the built-ins)
from ct_tune._errors import InputError
from ct_tune.models._build import call_builder, finish, first_conv_channels
from ct_tune.models._checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMAT_VERSION,
    find_state_dict,
    guess_in_channels,
    guess_num_classes,
    load_state,
    read_weights,
)
from ct_tune.models._input_spec import InputSpec
from ct_tune.models._loaded import LoadedModel
from ct_tune.models._registry import TIMM_PREFIX, list_models, registered, torchvision_names
from ct_tune.models._timm import check_timm_name, from_timm
from ct_tune.models._torchvision import from_torchvision

from torch import nn

__all__ = ["check_model_name", "create_model", "load_checkpoint"]

_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")


def check_model_name(name_or_path: str) -> None:
    """Fail fast (before loading data) on a model that cannot be resolved.

    Built-in names, files and factories are checked without importing torchvision; other names need its list.
    """
    _kind(name_or_path)


def _kind(name_or_path: str) -> Literal["factory", "checkpoint", "builtin", "torchvision", "timm"]:
    text = str(name_or_path)
    if _FACTORY.fullmatch(text) and not os.path.exists(text):
        return "factory"
    if os.path.exists(text):
        if os.path.isdir(text):
            raise InputError(f"model path {text} is a directory; give a checkpoint file")
        return "checkpoint"
    if registered(text) is not None:
        return "builtin"
    if text.startswith(TIMM_PREFIX):
        check_timm_name(text)
        return "timm"
    if text in torchvision_names():
        return "torchvision"
    if os.sep in text or text.endswith(_CHECKPOINT_SUFFIXES):
        raise InputError(f"checkpoint file {text} not found; check the path (relative paths start at {os.getcwd()})")
    valid = list_models()
    close = difflib.get_close_matches(text, valid, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise InputError(
        f"unknown model {text!r}{hint}; give a checkpoint file, a factory 'package.module:function', "
        f"a built-in ({', '.join(list_models('registered'))}), timm/<timm name> "
        f"or a torchvision model ({', '.join(torchvision_names())})"
    )


def create_model(
    name_or_path: str | os.PathLike[str],
    *,
    num_classes: int | None,
    in_channels: int = 3,
    weights: str | None = None,
    input_size: int | None = None,
    pretrained: bool = False,
    **model_kwargs: Any,
) -> LoadedModel:
    """Build (or load) a classifier for ``num_classes`` classes fed ``in_channels``-channel data.

    ``weights`` names torchvision weights; ``pretrained`` asks timm for the weights of a ``timm/<name>``.

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
    if weights is not None and kind != "torchvision":
        timm_hint = (
            " (timm models take pretrained=True; the tag in the name picks the weights)" if kind == "timm" else ""
        )
        raise InputError(
            f"weights={weights!r} applies to torchvision models only; {text!r} is a {kind} model{timm_hint}"
        )
    if pretrained and kind != "timm":
        raise InputError(f"pretrained applies to timm models (timm/<name>) only; {text!r} is a {kind} model")
    if kind == "checkpoint":
        return _check_classes(load_checkpoint(text, input_size=input_size), num_classes, text)
    if kind == "factory":
        return _from_factory(
            text, num_classes=num_classes, in_channels=in_channels, input_size=input_size, model_kwargs=model_kwargs
        )
    if kind == "builtin":
        entry = registered(text)
        assert entry is not None
        net = call_builder(entry.builder, text, num_classes=num_classes, in_channels=in_channels, **model_kwargs)
        spec = InputSpec.uniform(in_channels, entry.mean, entry.std, size=input_size or entry.input_size)
        return finish(net, spec, text, num_classes, "builtin", in_channels, model_kwargs, None)
    if kind == "timm":
        return from_timm(
            text,
            num_classes=num_classes,
            in_channels=in_channels,
            pretrained=pretrained,
            input_size=input_size,
            model_kwargs=model_kwargs,
        )
    return from_torchvision(
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
    made = call_builder(factory, target, num_classes=num_classes, in_channels=in_channels, **model_kwargs)
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
    channels = spec.channels if spec else (first_conv_channels(made) or in_channels)
    if spec is None:
        spec = InputSpec.uniform(channels, 0.5, 0.5)
    spec = spec.with_size(input_size)
    return finish(made, spec, target, num_classes, source, channels, model_kwargs, None)


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
    data = read_weights(text)
    if isinstance(data, dict) and data.get("format") == CHECKPOINT_FORMAT:
        return _check_classes(_from_ct_checkpoint(data, text, input_size), num_classes, text)
    hyper = data.get("hyper_parameters") if isinstance(data, dict) else None
    if isinstance(hyper, dict) and isinstance(hyper.get("ct_tune"), dict):
        info = hyper["ct_tune"]
        state = find_state_dict(data, text)
        merged = {"format_version": CHECKPOINT_FORMAT_VERSION, **info, "state_dict": state}
        return _check_classes(_from_ct_checkpoint(merged, text, input_size, prefix_search=True), num_classes, text)
    state = find_state_dict(data, text)
    if model is None:
        raise InputError(
            f"{text} is a plain state dict without its architecture; name it: model: {{name: resnet18, checkpoint: "
            f"{text}}} in a spec, --model resnet18 --checkpoint {text} on the command line"
        )
    if num_classes is None:
        num_classes = guess_num_classes(state)
    if in_channels is None:
        in_channels = guess_in_channels(state) or 3
    built = create_model(
        model, num_classes=num_classes, in_channels=in_channels if in_channels in (1, 3) else 3, input_size=input_size
    )
    load_state(built.net, state, text, built.name, prefix_search=True)
    built.source = f"checkpoint:{text}"
    return built


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
    load_state(built.net, state, path, name, prefix_search=prefix_search)
    built.input_spec = spec.with_size(input_size)
    built.source = f"checkpoint:{path}"
    built.weights = info.get("weights")
    built.metadata = dict(data.get("metadata") or {})
    return built
