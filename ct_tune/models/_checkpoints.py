"""ct-tune's checkpoint format and reading weights safely.

``torch.save`` of a plain dict (format, version, architecture, input spec, metadata, state dict), read
back with ``torch.load(weights_only=True)``: no pickled code ever runs. State dicts are found bare or
under the usual keys (Lightning's ``state_dict``), with a wrapper prefix (``module.``, ``model.``) found
and stripped, and a mismatch explained by its first differing tensor.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ct_tune._errors import InputError
from ct_tune._files import write_atomically
from ct_tune._version import __version__
from ct_tune.models._loaded import LoadedModel

import torch
from torch import Tensor, nn

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_FORMAT_VERSION", "read_weights", "save_checkpoint"]

CHECKPOINT_FORMAT = "ct-tune/checkpoint"
CHECKPOINT_FORMAT_VERSION = 1


def save_checkpoint(model: LoadedModel, path: str | os.PathLike[str], **metadata: Any) -> Path:
    """Write ``model`` in ct-tune's checkpoint format (atomically); ``metadata`` must be plain data."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "ct_tune_version": __version__,
        "torch_version": str(torch.__version__),
        **model.architecture(),
        "metadata": {**model.metadata, **metadata},
        "state_dict": {key: value.detach().cpu().clone() for key, value in model.net.state_dict().items()},
    }
    return write_atomically(
        path, lambda temporary: torch.save(payload, temporary), what="checkpoint", example="model.pt"
    )


def read_weights(path: str) -> Any:
    if not os.path.isfile(path):
        raise InputError(f"checkpoint file {path} not found")
    try:
        with warnings.catch_warnings():  # a plain pickle makes torch warn first: the error below says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "unsupported global" in str(error).lower():  # an allowed module's object, or a blocked one (os.system)
            raise InputError(
                f"{path} holds Python objects besides tensors; ct-tune does not execute pickled code (it loads "
                "weights_only=True): save the state dict (torch.save(model.state_dict(), path))"
            ) from error
        raise InputError(f"cannot read checkpoint {path}: not a PyTorch file, or corrupt") from error
    except Exception as error:  # garbage bytes make the unpickler fail in any way (IndexError, KeyError, ...)
        reason = " ".join(str(error).split())[:160]
        raise InputError(
            f"cannot read checkpoint {path}: not a PyTorch file, or corrupt/truncated ({reason})"
        ) from error


def find_state_dict(data: Any, path: str) -> dict[str, Tensor]:
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


def load_state(net: nn.Module, state: Mapping[str, Tensor], path: str, name: str, *, prefix_search: bool) -> None:
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


def guess_num_classes(state: Mapping[str, Tensor]) -> int:
    key = _last_weight_key(state)
    if key is None:
        raise InputError("cannot tell the number of classes from the state dict; pass num_classes")
    return int(state[key].shape[0])


def guess_in_channels(state: Mapping[str, Tensor]) -> int | None:
    for value in state.values():
        if value.dim() == 4:
            return int(value.shape[1])
    return None
