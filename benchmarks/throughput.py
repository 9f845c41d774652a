"""Trials per hour: ct-tune against a straightforward reimplementation of the paper's loop, same work.

    python benchmarks/throughput.py [--objective probe|accuracy] [--data mnist5k|digits] [--rounds 2]

The work is the paper's protocol: ReLU and the global grid 0.70, 0.71, ..., 0.99 (31 trials) on the
small built-in ResNet pretrained on digits, scored on ``--data`` (probe: the transfer protocol, a linear
probe fitted on 2,000 train images' features, scored on val; accuracy: the model's own head on val).

* paper loop: for each beta, load the checkpoint and build the model, replace every ``nn.ReLU`` module by
  a CT module, run the splits through a ``DataLoader`` (decoding and transforming the images each time),
  fit the probe (the same L-BFGS fit ct-tune uses, so only the machinery differs).
* ct-tune: a real study (SQLite Optuna storage, SQLite MLflow store with one child run per trial, the
  baseline and grid enqueued), run in this process by the same runner as ``ct-tune study run``: the model
  is loaded once, betas change through hooks, the splits are tensors materialised once.

Both are timed end to end (ct-tune's one-off set-up, loading the model and materialising the data, is
shown separately), alternating over ``--rounds`` so that machine noise hits both alike; the val scores of
the two must agree trial for trial (printed).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import ct_tune
from ct_tune.bench import Bench
from ct_tune.data import create_datamodule
from ct_tune.models import create_model
from ct_tune.objectives._probe import default_feature_layer, fit_linear_probe
from ct_tune.search import paper_grid
from ct_tune.search._loop import LoopSettings, TrialLoop

import torch
from _common import pretrained_digits_checkpoint
from torch import nn
from torch.utils.data import DataLoader

BETAS = [1.0, *paper_grid()]


# --------------------------------------------------------------------------------------------------
# The paper's loop, written the obvious way
class CTModule(nn.Module):
    def __init__(self, beta: float, c: float = 0.5) -> None:
        super().__init__()
        self.beta, self.c = beta, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ct_tune.ct(x, self.beta, self.c)


def replace_relus(module: nn.Module, beta: float) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            setattr(module, name, CTModule(beta))
        else:
            replace_relus(child, beta)


def paper_loop(checkpoint: Path, data, objective: str, batch_size: int) -> list[float]:
    scores = []
    for beta in BETAS:
        model = create_model(str(checkpoint), num_classes=data.num_classes, in_channels=data.native_channels)
        model.eval()
        if beta < 1.0:
            replace_relus(model.net, beta)
        loaders = {
            split: DataLoader(data.dataset(split), batch_size=batch_size, shuffle=False)
            for split in (("train", "val") if objective == "probe" else ("val",))
        }
        if objective == "accuracy":
            hits = total = 0
            with torch.inference_mode():
                for x, y in loaders["val"]:
                    hits += int((model(x).argmax(1) == y).sum())
                    total += len(y)
            scores.append(hits / total)
            continue
        head = dict(model.net.named_modules())[default_feature_layer(model.net)]
        captured: list[torch.Tensor] = []

        def keep(_module: nn.Module, args: tuple, store: list[torch.Tensor] = captured) -> None:
            store.append(args[0].flatten(1))

        hook = head.register_forward_pre_hook(keep)
        features, labels = {}, {}
        with torch.no_grad():
            for split, loader in loaders.items():
                captured.clear()
                ys = [y for x, y in loader if model(x) is not None]
                features[split], labels[split] = torch.cat(captured), torch.cat(ys)
        hook.remove()
        probe = fit_linear_probe(features["train"], labels["train"], data.num_classes, l2=1e-3, max_iter=100)
        scores.append(float((probe.logits(features["val"]).argmax(1) == labels["val"]).float().mean()))
    return scores


# --------------------------------------------------------------------------------------------------
def ct_tune_study(root: Path, checkpoint: Path, data_name: str, objective: str, batch_size: int, name: str):
    """ct-tune's own loop on the same work: the study created, then its trials run in this process."""
    spec = {
        "model": {"checkpoint": str(checkpoint)},
        "data": {"name": data_name, "seed": 0, **({"train_size": 2000} if objective == "probe" else {})},
        "search": {"granularity": "global", "enqueue_baseline": True, "enqueue_paper_grid": True},
        "objectives": [{"name": objective}],
        "sampler": {"name": "tpe", "seed": 0},
        "budget": {"n_trials": len(BETAS)},
        "run": {"device": "cpu", "batch_size": batch_size},
    }
    started = time.perf_counter()
    storage, tracking = f"sqlite:///{root}/{name}-optuna.db", f"sqlite:///{root}/{name}-mlflow.db"
    study = ct_tune.create_study(spec, name=name, storage=storage, tracking_uri=tracking)
    with Bench.open(study.spec, **study.spec.grouping, device="cpu") as bench:
        setup = time.perf_counter() - started
        run_started = time.perf_counter()
        TrialLoop(study, bench, study.tracker, LoopSettings(target_total=len(BETAS), refresh_plots=False)).run()
        run_seconds = time.perf_counter() - run_started
        data = bench.data
    trials = sorted(study.optuna_study.get_trials(), key=lambda t: t.number)
    study.tracker.flush()
    return setup, run_seconds, [t.value for t in trials], data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objective", default="probe", choices=["probe", "accuracy"])
    parser.add_argument("--data", default="mnist5k", choices=["mnist5k", "digits"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--checkpoint", help="the small ResNet pretrained on digits (default: cached, else now)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        checkpoint = Path(args.checkpoint) if args.checkpoint else pretrained_digits_checkpoint(root)
        train_size = 2000 if args.objective == "probe" else None
        data = create_datamodule(args.data, seed=0, batch_size=args.batch_size, train_size=train_size)
        data.input_spec = create_model(
            str(checkpoint), num_classes=data.num_classes, in_channels=data.native_channels
        ).input_spec
        naive_seconds, ours_run, ours_setup, differences = [], [], [], []
        for round_ in range(args.rounds):
            started = time.perf_counter()
            naive = paper_loop(checkpoint, data, args.objective, args.batch_size)
            naive_seconds.append(time.perf_counter() - started)
            setup, run_seconds, ours, _ = ct_tune_study(
                root, checkpoint, args.data, args.objective, args.batch_size, f"round{round_}"
            )
            ours_setup.append(setup)
            ours_run.append(run_seconds)
            differences.append(max(abs(a - b) for a, b in zip(naive, ours, strict=True)))
            print(
                f"round {round_}: paper loop {naive_seconds[-1]:.1f} s, ct-tune {setup:.1f} s set-up + "
                f"{run_seconds:.1f} s for {len(BETAS)} trials",
                flush=True,
            )

    naive_s, run_s, setup_s = (statistics.median(v) for v in (naive_seconds, ours_run, ours_setup))
    per_hour = {
        "paper loop": 3600 * len(BETAS) / naive_s,
        "ct-tune (trials)": 3600 * len(BETAS) / run_s,
        "ct-tune (with set-up)": 3600 * len(BETAS) / (run_s + setup_s),
    }
    print()
    print(
        f"{args.data}, objective {args.objective}, cifar_resnet_small, ReLU + paper grid ({len(BETAS)} trials), "
        f"{torch.get_num_threads()} CPU threads, median of {args.rounds} rounds"
    )
    for label, rate in per_hour.items():
        print(f"{label:<22} {rate:9.0f} trials/hour   {rate / per_hour['paper loop']:5.2f}x the paper loop")
    print(f"largest difference between the two loops' val scores: {max(differences):.2g}")


if __name__ == "__main__":
    main()
