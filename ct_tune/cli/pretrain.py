"""``ct-tune pretrain``: train a classifier on a dataset's train split and write a ct-tune checkpoint."""

from __future__ import annotations

import argparse
import os

from ct_tune.cli._common import CommandResult, add_command
from ct_tune.cli._options import add_data_options, add_model_options

DESCRIPTION = """\
Train a model on the train split with Lightning, keep the epoch with the best val accuracy, log to MLflow,
and write a checkpoint (the network, its input spec, the dataset split and the val accuracy) that other
ct-tune commands accept as --model. The test split is not used.

examples:
  ct-tune pretrain                                   # small built-in ResNet on scikit-learn digits
  ct-tune pretrain --data mnist5k --epochs 10 --json
  ct-tune pretrain --activation silu                 # the same ResNet with SiLU (or gelu) instead of ReLU
  ct-tune pretrain --model cifar_resnet18 --data cifar10 --data-dir ~/data --augment --epochs 100
"""


def register(subparsers) -> None:
    from ct_tune.models import ACTIVATIONS, DEFAULT_MODEL
    from ct_tune.stores import DEFAULT_TRACKING_URI

    parser = add_command(
        subparsers, "pretrain", _run, help="train a model on a dataset and write a checkpoint", description=DESCRIPTION
    )
    add_model_options(parser, default=DEFAULT_MODEL).add_argument(
        "--activation",
        choices=ACTIVATIONS,
        default="relu",
        help=f"nonlinearity of {DEFAULT_MODEL} (default: %(default)s); the checkpoint records it",
    )
    add_data_options(parser)
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=int, default=15, metavar="N", help="(default: %(default)s)")
    group.add_argument(
        "--lr",
        type=float,
        default=0.1,
        metavar="LR",
        help="peak learning rate of the one-cycle schedule (default: %(default)s)",
    )
    group.add_argument("--batch-size", type=int, default=64, metavar="N", help="(default: %(default)s)")
    group.add_argument("--weight-decay", type=float, default=5e-4, metavar="WD", help="(default: %(default)s)")
    group.add_argument("--label-smoothing", type=float, default=0.0, metavar="EPS", help="(default: %(default)s)")
    group.add_argument(
        "--augment", action="store_true", help="random crops (and flips where labels allow) for training"
    )
    group.add_argument(
        "--accelerator", default="auto", help="Lightning accelerator: auto, cpu, gpu, ... (default: auto)"
    )
    group.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="torch threads for training (default: 1, the same weights on any machine; more is faster on CPU "
        "but the weights then depend on N)",
    )
    group.add_argument("--precision", metavar="P", help="Lightning precision, e.g. bf16-mixed (default: 32-true)")
    group.add_argument(
        "--out", metavar="PATH", help="checkpoint to write (default: checkpoints/<model>-<data>-seed<seed>.pt)"
    )
    group = parser.add_argument_group("tracking")
    group.add_argument(
        "--tracking-uri",
        metavar="URI",
        help=f"MLflow database or server (default: $MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI})",
    )
    group.add_argument(
        "--experiment", default="ct-tune-pretrain", metavar="NAME", help="MLflow experiment (default: %(default)s)"
    )


def _run(args: argparse.Namespace) -> CommandResult:
    from ct_tune.training import PretrainConfig

    config = PretrainConfig(
        model=os.path.expanduser(args.model),
        activation=args.activation,
        data=args.data,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        out=args.out,
        weights=args.weights,
        checkpoint=os.path.expanduser(args.checkpoint) if args.checkpoint else None,
        input_size=args.input_size,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        augment=args.augment,
        data_dir=args.data_dir,
        download=args.download,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        train_size=args.train_size,
        val_size=args.val_size,
        num_workers=args.num_workers,
        threads=args.threads,
        accelerator=args.accelerator,
        precision=args.precision,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
        progress=args.verbose - args.quiet >= 0,
    )
    from ct_tune.training import pretrain

    payload = pretrain(config)
    return CommandResult(payload=payload, render=lambda: _render(payload))


def _render(payload: dict) -> None:
    print(f"checkpoint: {payload['checkpoint']}")
    print(f"val_accuracy: {payload['val_accuracy']:.4f} (best epoch {payload['best_epoch']} of {payload['epochs']})")
    print(f"seconds: {payload['seconds']}")
    print(f"data: {payload['data']} {payload['sizes']} fingerprint {payload['fingerprint']}")
    print(f"mlflow run: {payload['mlflow_run_id']} at {payload['tracking_uri']}")
