"""What the ``study`` and ``pipeline`` commands share: store and worker options, and how results look."""

from __future__ import annotations

import argparse
from typing import Any

from ct_tune import InputError
from ct_tune.cli._common import CommandResult, print_table


def add_store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage", help="Optuna storage URL (default: $CT_TUNE_STORAGE, else sqlite:///studies/optuna.db)"
    )
    parser.add_argument(
        "--tracking-uri",
        help="MLflow backend store (default: $MLFLOW_TRACKING_URI, else the one the study was created with)",
    )


def add_worker_options(parser: argparse.ArgumentParser) -> None:
    """How trials are run: worker processes, devices, heartbeats, logs."""
    parser.add_argument("--workers", type=int, help="worker processes (default: one per GPU, else 1)")
    parser.add_argument("--devices", help="auto, cpu, or GPUs like cuda:0,cuda:1 (default: the spec's run.device)")
    parser.add_argument("--heartbeat", type=int, default=10, help="seconds between a worker's heartbeats (default 10)")
    parser.add_argument(
        "--grace", type=int, help="seconds without heartbeats before a trial is dead (default 60, or 3x heartbeat)"
    )
    parser.add_argument(
        "--oversubscribe",
        action="store_true",
        help="start more CPU workers than this process's cores (refused otherwise; each runs slower)",
    )
    parser.add_argument("--log-dir", help="per-worker logs (default: logs/<study>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")


def worker_options(args: argparse.Namespace) -> dict[str, Any]:
    """The worker options as keyword arguments of ``Study.run`` / ``run_pipeline``."""
    return {
        "workers": args.workers,
        "devices": args.devices,
        "heartbeat": args.heartbeat,
        "grace": args.grace,
        "log_dir": args.log_dir,
        "progress": not args.no_progress,
        "oversubscribe": args.oversubscribe,
    }


def parse_timeout(text: str | None) -> float | None:
    if text is None:
        return None
    from ct_tune.search import parse_duration

    try:
        return parse_duration(text)
    except ValueError as error:
        raise InputError(f"--timeout: {error}") from None


def render_best(names: list[str], study: str, status: dict[str, Any]) -> None:
    best = status.get("best") or []
    if not best:
        print("no completed trial yet")
        return
    baseline = status.get("baseline")
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
    print_table(f"{title} of {study}", ["trial", *names, "c", "beta per unit"], rows)


def summary_result(study: Any, summary: Any) -> CommandResult:
    """What ``study run`` shows: why it stopped, what this launch did, and the best trial so far."""
    payload = study.status().to_dict()
    payload.update(
        {
            "stopped": summary.reason,
            "finished_this_run": summary.finished,
            "failed_this_run": summary.failed,
            "seconds_this_run": summary.seconds,
        }
    )

    def render() -> None:
        print(
            f"study {study.name}: {summary.reason}; {summary.finished} trial(s) finished in this run, "
            f"{summary.failed} failed"
        )
        render_best(study.objective_names, study.name, payload)

    return CommandResult(payload, render)


def profile_text(betas: dict[str, float], limit: int = 12) -> str:
    items = [f"{unit} {value:.3f}" for unit, value in betas.items()]
    return ", ".join(items[:limit]) + (f", ... ({len(items)} units)" if len(items) > limit else "")


def short_list(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")
