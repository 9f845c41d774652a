"""Options shared by commands that load a dataset or a model (``--data``, ``--data-dir``, ``--model``, ...).

Nothing heavy is imported here: ``ct-tune --help`` stays fast.
"""

from __future__ import annotations

import argparse
from typing import Any

from ct_tune import InputError

__all__ = ["add_data_options", "add_model_options", "model_section"]


def add_data_options(parser: argparse.ArgumentParser, *, default: str | None = "digits") -> None:
    from ct_tune.data import DATASETS

    group = parser.add_argument_group("data")
    group.add_argument(
        "--data", default=default, metavar="NAME", help=f"dataset: {', '.join(DATASETS)} (default: %(default)s)"
    )
    group.add_argument(
        "--data-dir",
        metavar="DIR",
        help="where datasets live (default: $CT_TUNE_DATA, else ~/.cache/ct-tune/data); imagefolder: the tree",
    )
    group.add_argument("--download", action="store_true", help="download a torchvision dataset that is missing")
    group.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split (and of training)")
    group.add_argument(
        "--val-fraction",
        type=float,
        metavar="F",
        help="val share of the train pool, where the dataset has no val split",
    )
    group.add_argument(
        "--test-fraction",
        type=float,
        metavar="F",
        help="test share of the train pool, where the dataset has no test split",
    )
    group.add_argument("--train-size", type=int, metavar="N", help="keep a stratified subset of N training images")
    group.add_argument("--val-size", type=int, metavar="N", help="keep a stratified subset of N val images")
    group.add_argument("--num-workers", type=int, default=0, metavar="N", help="data loading processes (default: 0)")


def add_model_options(parser: argparse.ArgumentParser, *, default: str | None = None) -> argparse._ArgumentGroup:
    """The model group (returned, for a command's own model options)."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default=default,
        metavar="M",
        help="built-in or torchvision name, checkpoint file, or package.module:function"
        + (f" (default: {default})" if default else ""),
    )
    group.add_argument("--weights", metavar="W", help="torchvision weights: DEFAULT, IMAGENET1K_V1, ...")
    group.add_argument(
        "--checkpoint", metavar="FILE", help="weights for --model: a state dict or Lightning .ckpt (weights_only)"
    )
    group.add_argument("--input-size", type=int, metavar="PX", help="side of the square input (default: the model's)")
    return group


def model_section(args: argparse.Namespace) -> dict[str, Any]:
    """--model and/or --checkpoint as the spec's model section (a checkpoint with a name gives its weights)."""
    if args.model is None and args.checkpoint is None:
        raise InputError("give --checkpoint FILE, --model NAME, or both (a state dict for that architecture)")
    section = {"name": args.model, "checkpoint": args.checkpoint, "weights": getattr(args, "weights", None)}
    return {key: value for key, value in section.items() if value is not None}
