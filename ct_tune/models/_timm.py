"""timm models by name (``timm/<name>``, e.g. ``timm/resnet50.a1_in1k``): an optional extra.

timm builds the network as its users know it, ``timm.create_model(name, pretrained=..., num_classes=...,
in_chans=...)``, and fits the classifier to ``num_classes`` itself. The input spec is timm's data config
for that name (mean, std, input size, crop_pct, interpolation): the statistics its weights were trained
with. timm is imported here only, so ct-tune works without it.
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from types import ModuleType
from typing import Any

from ct_tune._errors import InputError
from ct_tune.models._build import finish
from ct_tune.models._input_spec import INTERPOLATIONS, InputSpec
from ct_tune.models._loaded import LoadedModel
from ct_tune.models._registry import TIMM_PREFIX

__all__ = ["check_timm_name", "from_timm"]


def _timm(name: str) -> ModuleType:
    try:
        import timm
    except ImportError:
        raise InputError(
            f"model {name!r} needs timm, an optional extra: pip install 'ct-tune[timm]' (or pip install timm)"
        ) from None
    return timm


@lru_cache(maxsize=1)
def _known_names() -> frozenset[str]:
    """timm's architectures and their pretrained tags (``resnet50``, ``resnet50.a1_in1k``, ...)."""
    import timm

    return frozenset(timm.list_models()) | frozenset(timm.list_models(pretrained=True))


def check_timm_name(name: str) -> None:
    """Refuse a ``timm/<name>`` that timm does not know, with the closest names it does."""
    _timm(name)
    bare = name.removeprefix(TIMM_PREFIX)
    known = _known_names()
    if bare in known:
        return
    close = difflib.get_close_matches(bare, sorted(known), n=3)
    hint = f" (did you mean {', '.join(TIMM_PREFIX + match for match in close)}?)" if close else ""
    raise InputError(
        f"unknown timm model {name!r}{hint}; timm names are architectures (timm/resnet50) or architectures with "
        "a pretrained tag (timm/resnet50.a1_in1k): see ct_tune.models.list_models('timm')"
    )


def from_timm(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    pretrained: bool,
    input_size: int | None,
    model_kwargs: dict[str, Any],
) -> LoadedModel:
    timm = _timm(name)
    bare = name.removeprefix(TIMM_PREFIX)
    arguments = {"pretrained": pretrained, "num_classes": num_classes, "in_chans": in_channels, **model_kwargs}
    try:
        net = timm.create_model(bare, **arguments)
    except TypeError as error:
        raise InputError(f"cannot build model {name!r}: {error}") from error
    except (OSError, RuntimeError) as error:  # offline: huggingface_hub's LocalEntryNotFoundError is an OSError
        if not pretrained:
            raise
        raise InputError(_download_failure(name, error)) from error
    cfg = net.pretrained_cfg
    weights = f"{cfg.get('architecture')}.{cfg.get('tag')}" if pretrained else None
    spec = _timm_spec(timm.data.resolve_data_config(model=net), in_channels, input_size)
    return finish(net, spec, name, num_classes, "timm", in_channels, model_kwargs, weights)


def _timm_spec(config: dict[str, Any], in_channels: int, input_size: int | None) -> InputSpec:
    """timm's data config as an InputSpec; one channel takes the mean of the RGB statistics.

    timm adapts a pretrained first convolution to one channel by summing its RGB weights, i.e. it reads
    a gray image as three equal channels; one mean and std in the middle of the three is the closest
    single normalisation.
    """
    mean, std = tuple(config["mean"]), tuple(config["std"])
    if in_channels == 1 and len(mean) == 3:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    interpolation = config.get("interpolation", "bilinear")
    return InputSpec(
        input_size or int(config["input_size"][-1]),
        in_channels,
        mean,
        std,
        crop_pct=min(1.0, float(config.get("crop_pct") or 1.0)),
        interpolation=interpolation if interpolation in INTERPOLATIONS else "bilinear",
    )


def _download_failure(name: str, error: BaseException) -> str:
    from huggingface_hub import constants
    from timm.models import get_pretrained_cfg

    reason = " ".join(str(error).split())[:200]
    cfg = get_pretrained_cfg(name.removeprefix(TIMM_PREFIX))
    fetch = (
        f"`hf download {cfg.hf_hub_id}`" if cfg is not None and cfg.hf_hub_id else "timm.create_model(pretrained=True)"
    )
    return (
        f"cannot get the pretrained weights of {name} ({type(error).__name__}: {reason}); on a machine with network "
        f"run {fetch} and copy the Hugging Face cache to {constants.HF_HUB_CACHE} here (HF_HUB_OFFLINE=1 then reads "
        "it without retrying the network), or pass a weights file with --checkpoint"
    )
