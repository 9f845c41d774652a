"""Helpers shared by the ``ct-tune study`` commands: locating a study, its tracker, tables, progress."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from ct_tune._errors import InputError
from ct_tune.cli._common import CommandResult, print_table


def add_store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage", help="Optuna storage URL (default: $CT_TUNE_STORAGE, else sqlite:///studies/optuna.db)"
    )
    parser.add_argument(
        "--tracking-uri",
        help="MLflow backend store (default: $MLFLOW_TRACKING_URI, else the one the study was created with)",
    )


def spec_file(text: str) -> Path | None:
    path = Path(text)
    return path if path.suffix in (".yaml", ".yml") and path.is_file() else None


def name_and_storage(args: argparse.Namespace) -> tuple[str, str]:
    """A study given by name, or by the spec file it was created from (its name and storage)."""
    from ct_tune.spec import load_spec
    from ct_tune.storage import resolve_storage

    spec_path = spec_file(args.study)
    if spec_path is None:
        return args.study, resolve_storage(args.storage)
    spec = load_spec(spec_path)
    return spec.name or spec_path.stem, resolve_storage(args.storage, spec.storage)


def open_study(args: argparse.Namespace):
    from ct_tune.study import load_study

    name, storage_url = name_and_storage(args)
    return load_study(name=name, storage_url=storage_url)


def tracker_for(args: argparse.Namespace, info: Any):
    from ct_tune.storage import resolve_tracking_uri
    from ct_tune.tracking import Tracker

    uri = resolve_tracking_uri(args.tracking_uri, info.mlflow.get("tracking_uri"))
    if ":***@" in uri:
        raise InputError(
            f"study {info.name!r} logs to {uri}, whose password is not stored: pass --tracking-uri with it, set "
            "MLFLOW_TRACKING_URI, or keep the password in ~/.pgpass / PGPASSWORD"
        )
    return Tracker(uri, artifact_location=info.mlflow.get("artifact_location"))


def summary_result(info: Any, reason: str, finished: int, failed: int) -> CommandResult:
    from ct_tune.study import status

    payload = status(info)
    payload.update({"stopped": reason, "finished_this_run": finished, "failed_this_run": failed})

    def render() -> None:
        print(f"study {info.name}: {reason}; {finished} trial(s) finished in this run, {failed} failed")
        render_best(info, payload)

    return CommandResult(payload, render)


class Progress:
    """A tqdm bar on stderr with a line per finished trial (or plain lines without a bar)."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            # disable=None: no bar when stderr is not a terminal (logs stay readable lines)
            self.bar = tqdm(total=total, unit="trial", file=sys.stderr, dynamic_ncols=True, leave=False, disable=None)

    def trial(self, line: dict[str, Any], text: str) -> None:
        self.write(text)
        if self.bar is not None and line["state"] in ("COMPLETE", "PRUNED"):
            self.bar.update(1)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def render_best(info: Any, payload: dict[str, Any]) -> None:
    best = payload.get("best") or []
    if not best:
        print("no completed trial yet")
        return
    names = info.objective_names
    baseline = payload.get("baseline")
    title = "Pareto front" if len(best) > 1 else "best trial"
    rows = []
    for trial in best:
        rows.append(
            [trial["number"], *(trial["values"].get(n) for n in names), trial["c"], profile_text(trial["betas"])]
        )
    if baseline is not None:
        rows.append(
            [f"{baseline['number']} (ReLU)", *(baseline["values"].get(n) for n in names), baseline["c"], "all 1.0"]
        )
    print_table(f"{title} of {info.name}", ["trial", *names, "c", "beta per unit"], rows)


def profile_text(betas: dict[str, float], limit: int = 12) -> str:
    items = [f"{unit} {value:.3f}" for unit, value in betas.items()]
    return ", ".join(items[:limit]) + (f", ... ({len(items)} units)" if len(items) > limit else "")


def short_list(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def parse_timeout(text: str | None) -> float | None:
    if text is None:
        return None
    from ct_tune.spec import parse_duration

    try:
        value = parse_duration(text)
    except ValueError as error:
        raise InputError(f"--timeout: {error}") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"--timeout must be positive, not {text!r}")
    return value
