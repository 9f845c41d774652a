"""``ct-tune units``: the units (one beta each) of a model at a granularity."""

from __future__ import annotations

import argparse
from typing import Any

from ct_tune.cli._common import CommandResult, add_command, print_table


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "units", _units, help="list the units of a model (what a profile gives betas to)")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="a ct-tune checkpoint")
    model.add_argument("--model", help="model name: built-in, torchvision, or package.module:function")
    parser.add_argument("--data", default="digits", help="dataset the model is fed (sets classes, channels, size)")
    parser.add_argument("--data-dir", help="where datasets live")
    parser.add_argument("--granularity", default="block", help="global, stage, block or site (default block)")


def _units(args: argparse.Namespace) -> CommandResult:
    from ct_tune.grouping import GRANULARITIES, group_sites
    from ct_tune.session import Session
    from ct_tune.spec import spec_from_dict

    spec = spec_from_dict(
        {
            "model": {"checkpoint": args.checkpoint} if args.checkpoint else {"name": args.model},
            "data": {"name": args.data, "data_dir": args.data_dir},
            "search": {"granularity": args.granularity, "enqueue_baseline": False},
        },
        source="arguments",
    )
    session = Session.open(spec, device="cpu", steer=False)
    mapping = group_sites(session.model.net, session.trace.sites, args.granularity)
    units: dict[str, list[str]] = {}
    for site, unit in mapping.items():
        units.setdefault(unit, []).append(site)
    payload = {
        "model": type(session.model.net).__name__,
        "granularity": args.granularity,
        "units": list(units),
        "sites": units,
        "counts": {g: len(set(group_sites(session.model.net, session.trace.sites, g).values())) for g in GRANULARITIES},
        "fingerprint": session.trace.fingerprint,
    }

    def render() -> None:
        rows = [
            [unit, len(sites), ", ".join(sites[:4]) + (" ..." if len(sites) > 4 else "")]
            for unit, sites in units.items()
        ]
        counts = ", ".join(f"{g} {n}" for g, n in payload["counts"].items())
        print_table(
            f"{payload['model']}: {len(units)} {args.granularity} units ({counts})",
            ["unit", "ReLU calls", "sites"],
            rows,
        )

    return CommandResult(payload, render)
