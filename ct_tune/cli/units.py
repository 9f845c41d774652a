"""``ct-tune units``: the units (one beta each) of a model at a granularity."""

from __future__ import annotations

import argparse
from typing import Any

from ct_tune.cli._common import CommandResult, add_command, print_table
from ct_tune.cli._options import model_section


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "units", _units, help="list the units of a model (what a profile gives betas to)")
    parser.add_argument("--checkpoint", help="a ct-tune checkpoint (or, with --model, its weights)")
    parser.add_argument("--model", help="model name: built-in, torchvision, or package.module:function")
    parser.add_argument("--data", default="digits", help="dataset the model is fed (sets classes, channels, size)")
    parser.add_argument("--data-dir", help="where datasets live")
    parser.add_argument("--granularity", default="block", help="global, stage, block or site (default block)")


def _units(args: argparse.Namespace) -> CommandResult:
    from ct_tune.bench import model_units

    payload = model_units(
        model=model_section(args),
        data={"name": args.data, "data_dir": args.data_dir},
        granularity=args.granularity,
    )
    units = payload["sites"]

    def render() -> None:
        families = payload["families"]
        relu_only = set(families.values()) == {"relu"}
        rows = [
            [
                unit,
                *([] if relu_only else [families[unit]]),
                len(sites),
                ", ".join(sites[:4]) + (" ..." if len(sites) > 4 else ""),
            ]
            for unit, sites in units.items()
        ]
        counts = ", ".join(f"{g} {n}" for g, n in payload["counts"].items())
        columns = ["unit", "ReLU calls", "sites"] if relu_only else ["unit", "activation", "calls", "sites"]
        print_table(f"{payload['model']}: {len(units)} {args.granularity} units ({counts})", columns, rows)

    return CommandResult(payload, render)
