"""``ct-tune train-ct``: train CT's betas and c by gradient (the CT authors' trained CT) instead of searching."""

from __future__ import annotations

import argparse
import sys

from ct_tune.cli._common import CommandResult, add_command, print_table

DESCRIPTION = """\
Train one beta and one c per unit, or per channel of every ReLU's input (granularity channel, what the
CT authors train), on the train split with the objective's head: a linear head on the probe's features
(trained jointly) for probe, the model's own frozen classifier for accuracy. The backbone stays frozen.
Every epoch's values are scored on val as a study trial scores them; the best epoch is kept and written
as a beta profile (apply it with apply_profile, score it with ct-tune evaluate --profile, warm-start a
search from it). The run, its per-epoch curves and the betas per unit go to MLflow.

The spec is a study spec's model, data, run sections, one objective, and a train section:
  train: {granularity: channel, lr: 0.1, head_lr: 0.001, init_beta: 0.8, init_c: 0.5, epochs: 20,
          lr_step: 10, lr_decay: 0.1, batch_size: 32, patience: null, train_c: true, seed: 0}
(the defaults shown are the CT authors'). Flags override the train section.

With --tune, an Optuna study searches the training's own settings (the spec's tune: section, e.g.
  tune: {n_trials: 8, lr: {low: 0.01, high: 1, log: true}, init_beta: {low: 0.6, high: 0.95},
         epochs: {low: 2, high: 20}, granularity: [block, channel]})
one training per trial, each its own MLflow run; the best trial's profile goes to --out.

examples:
  ct-tune train-ct trained/digits-to-mnist5k.yaml --out profiles/trained.json
  ct-tune train-ct spec.yaml --granularity block --epochs 10 --lr 0.05 --json
  ct-tune train-ct spec.yaml --tune --out profiles/tuned.json
"""


def register(subparsers) -> None:
    parser = add_command(
        subparsers, "train-ct", _run, help="train CT's betas by gradient instead of searching", description=DESCRIPTION
    )
    parser.add_argument("spec", help="YAML spec: model, data, objective, run, train")
    group = parser.add_argument_group("training (override the spec's train section)")
    group.add_argument("--granularity", help="global, stage, block, site or channel (default: channel)")
    group.add_argument("--lr", type=float, help="Adam learning rate of the CT parameters (default 0.1)")
    group.add_argument("--head-lr", type=float, help="Adam learning rate of the probe's head (default 0.001)")
    group.add_argument("--init-beta", type=float, help="initial beta (default 0.8)")
    group.add_argument("--init-c", type=float, help="initial c (default 0.5)")
    group.add_argument("--epochs", type=int, help="epochs (default 20)")
    group.add_argument("--lr-step", type=int, help="epoch after which the learning rates drop (default 10)")
    group.add_argument("--batch-size", type=int, help="training batch size (default 32)")
    group.add_argument("--patience", type=int, help="stop after this many epochs without a better val score")
    group.add_argument("--seed", type=int, help="head initialisation and batch order (default 0)")
    group.add_argument("--out", metavar="PATH", help="write the trained profile here (JSON)")
    group = parser.add_argument_group("tuning the training's settings")
    group.add_argument("--tune", action="store_true", help="run an Optuna study over the spec's tune: section")
    group.add_argument("--storage", metavar="URL", help="Optuna storage of --tune (default: as for studies)")
    group = parser.add_argument_group("tracking")
    group.add_argument("--tracking-uri", metavar="URI", help="MLflow database or server (default: as for studies)")
    group.add_argument("--no-mlflow", action="store_true", help="do not log the run to MLflow")


def _run(args: argparse.Namespace) -> CommandResult:
    from ct_tune.trained import TrainCTSpec, run_train_ct

    keys = ("granularity", "lr", "head_lr", "init_beta", "init_c", "epochs", "lr_step", "batch_size", "patience")
    overrides = {key: getattr(args, key) for key in (*keys, "seed")}
    spec = TrainCTSpec.load(args.spec, overrides=overrides)
    verbose = args.verbose - args.quiet >= 0

    def progress(row: dict[str, float]) -> None:
        if verbose:
            print(
                f"epoch {int(row['epoch'])}: train loss {row['train_loss']:.4f}, val {row['val']:.4f}, "
                f"mean beta {row['beta_mean']:.3f}",
                file=sys.stderr,
            )

    if args.tune:
        from ct_tune.trained import tune_train_ct

        say = (lambda text: print(text, file=sys.stderr)) if verbose else None
        payload = tune_train_ct(spec, storage=args.storage, tracking_uri=args.tracking_uri, out=args.out, say=say)
        return CommandResult(payload, lambda: _render_tune(payload))
    payload = run_train_ct(
        spec, out=args.out, tracking_uri=args.tracking_uri, track=not args.no_mlflow, on_epoch=progress
    )
    return CommandResult(payload, lambda: _render(payload))


def _render(payload: dict) -> None:
    rows = [
        [int(row["epoch"]), row["train_loss"], row["train_accuracy"], row["val"], row["beta_mean"], row["c_mean"]]
        for row in payload["history"]
    ]
    print_table("trained CT, per epoch", ["epoch", "train loss", "train acc", "val", "mean beta", "mean c"], rows)
    n = payload["result"].get("n")
    baseline = f"{payload.get('baseline_label', 'ReLU')} baseline {payload['baseline']:.4f}"
    print(
        f"val {payload['objective']}: {payload['value']:.4f} (best epoch {payload['best_epoch']}, n={n}) vs "
        f"{baseline}: {payload['gain']:+.4f}; {payload['parameters']} parameters in "
        f"{payload['units']} units ({payload['granularity']}), {payload['seconds']:.1f}s"
    )
    if "profile_path" in payload:
        print(f"profile: {payload['profile_path']}")
    if "mlflow" in payload:
        print(f"mlflow run: {payload['mlflow']['run_id']} at {payload['mlflow']['tracking_uri']}")


def _render_tune(payload: dict) -> None:
    names = sorted({key for trial in payload["trials"] for key in trial["params"]})
    rows = [[t["number"], *(t["params"].get(n) for n in names), t["value"]] for t in payload["trials"]]
    print_table(f"study {payload['study']} (val {payload['objective']})", ["trial", *names, "val"], rows)
    best = payload["best"]
    print(
        f"best: trial {best['number']} {best['params']} val {best['value']:.4f} (ReLU baseline "
        f"{payload['baseline']:.4f}; chosen on val, so optimistic: report on test to compare)"
    )
    if "profile_path" in payload:
        print(f"profile: {payload['profile_path']}")
