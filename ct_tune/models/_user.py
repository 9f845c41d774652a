"""The user's own model: an ``nn.Module`` or ``LightningModule`` class named by ``class_path`` + ``init_args``.

- A ``LightningModule`` with a Lightning checkpoint is loaded through Lightning's own
  ``load_from_checkpoint`` (its saved hyper-parameters rebuild it; ``init_args`` override them), with
  ``weights_only=True``: a checkpoint that pickles Python objects is refused, not executed.
- Any other class is built with ``init_args`` and, with a checkpoint, given its weights from a state dict
  (bare, or under ``state_dict`` as Lightning writes it, with a wrapper prefix such as ``model.`` found
  and stripped), read with ``weights_only=True``.
- The network is steered as it is: its forward is the user's. Unless ``normalization`` is given, it is
  fed what the data serves (no resize, no normalisation by ct-tune).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

from ct_tune._classpath import import_class, instantiate
from ct_tune._errors import InputError
from ct_tune.models._checkpoints import find_state_dict, load_state, read_weights
from ct_tune.models._input_spec import InputSpec
from ct_tune.models._loaded import LoadedModel

from torch import nn

__all__ = ["load_user_model"]


def load_user_model(
    class_path: str,
    init_args: Mapping[str, Any],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    input_size: int | None = None,
    num_classes: int | None = None,
) -> LoadedModel:
    """Build (and load) the user's model; ``num_classes`` is only recorded (the user's class decides its head)."""
    cls = import_class(class_path, what="model.class_path")
    if not issubclass(cls, nn.Module):
        raise InputError(f"model.class_path {class_path!r} is a {cls.__name__}, not a torch.nn.Module")
    path = os.fspath(checkpoint) if checkpoint is not None else None
    if path is not None and not os.path.isfile(path):
        raise InputError(f"model.checkpoint {path} not found; check the path (relative paths start at {os.getcwd()})")
    if path is not None and _is_lightning_module(cls) and _is_lightning_checkpoint(path):
        net = _load_lightning(cls, path, init_args)
    else:
        net = instantiate(cls, init_args, what="model")
        if path is not None:
            load_state(net, find_state_dict(read_weights(path), path), path, class_path, prefix_search=True)
    net.eval()
    spec = None
    if normalization is not None:
        mean, std = normalization
        spec = InputSpec(size=input_size, channels=len(mean), mean=tuple(mean), std=tuple(std))
    return LoadedModel(
        net,
        spec,
        class_path,
        num_classes or 0,
        f"class_path:{class_path}" + (f" checkpoint:{path}" if path else ""),
        in_channels=len(normalization[0]) if normalization else 0,
        model_kwargs=dict(init_args),
    )


def _is_lightning_module(cls: type) -> bool:
    import lightning as L

    return issubclass(cls, L.LightningModule)


def _is_lightning_checkpoint(path: str) -> bool:
    data = read_weights(path)
    return isinstance(data, dict) and "state_dict" in data and ("pytorch-lightning_version" in data or "epoch" in data)


def _load_lightning(cls: type, path: str, init_args: Mapping[str, Any]) -> nn.Module:
    try:
        return cls.load_from_checkpoint(path, map_location="cpu", weights_only=True, **dict(init_args))
    except pickle.UnpicklingError:
        raise InputError(
            f"{path} holds Python objects besides tensors; ct-tune does not execute pickled code (it loads "
            "weights_only=True): save the weights alone (torch.save(module.state_dict(), path)) and give "
            "model.init_args for the rest"
        ) from None
    except TypeError as error:
        raise InputError(
            f"{cls.__name__}.load_from_checkpoint({path}) cannot rebuild the module: {error}; give the missing "
            "arguments in model.init_args (or call save_hyperparameters() in its __init__)"
        ) from None
    except (RuntimeError, KeyError) as error:
        raise InputError(
            f"{path} does not fit {cls.__name__}: {' '.join(str(error).split())[:240]}; use the checkpoint this "
            "class wrote (or fix model.init_args)"
        ) from None
