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


def add_executor_options(parser: argparse.ArgumentParser) -> None:
    """Where the workers run: this machine, a SLURM job array, or a Ray cluster."""
    parser.add_argument(
        "--executor",
        choices=("local", "slurm", "ray"),
        default="local",
        help="local: processes here (default); slurm: a job array through submitit; ray: one actor per GPU/CPU slot",
    )
    slurm = parser.add_argument_group("SLURM (--executor slurm; the storage must be PostgreSQL)")
    slurm.add_argument("--nodes", type=int, help="array elements, one node each (default 1)")
    slurm.add_argument("--gpus-per-node", type=int, help="GPUs per node: one worker each (default 0: CPU workers)")
    slurm.add_argument("--tasks-per-node", type=int, help="workers per node (default: one per GPU, else 1)")
    slurm.add_argument("--cpus-per-task", type=int, help="CPUs per worker (default: the cluster's)")
    slurm.add_argument("--mem-gb", type=float, help="memory per node in GB (default: the cluster's)")
    slurm.add_argument("--partition", help="SLURM partition")
    slurm.add_argument("--account", help="SLURM account")
    slurm.add_argument("--qos", help="SLURM quality of service")
    slurm.add_argument("--constraint", help="SLURM node features, e.g. a100")
    slurm.add_argument("--time", help="time limit per job: minutes, or 30m, 4h (default 4h); a requeue resumes")
    slurm.add_argument(
        "--sbatch", action="append", metavar="FLAG=VALUE", help="any other #SBATCH flag, e.g. exclude=node7 (repeat)"
    )
    slurm.add_argument(
        "--submitit-local",
        action="store_true",
        help="run the job array through submitit's local executor on this machine (to try a setup first)",
    )
    slurm.add_argument("--wait", action="store_true", help="follow the jobs with the progress view until they end")
    ray = parser.add_argument_group("Ray (--executor ray)")
    ray.add_argument("--address", help="auto, or ray://HEAD:10001 (default: a Ray instance on this machine)")
    ray.add_argument("--cpus-per-worker", type=int, help="CPUs per actor (default 1)")
    ray.add_argument("--max-restarts", type=int, help="restarts per actor after a lost process or node (default 3)")


SLURM_FLAGS = (
    "nodes",
    "gpus_per_node",
    "tasks_per_node",
    "cpus_per_task",
    "mem_gb",
    "partition",
    "account",
    "qos",
    "constraint",
    "time",
    "sbatch",
    "submitit_local",
    "wait",
)
RAY_FLAGS = ("address", "cpus_per_worker", "max_restarts")


def executor_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--executor`` and its flags as keyword arguments of ``Study.run``; a flag of another executor is
    refused, so that a typo never runs the search somewhere the user did not mean."""
    for executor, flags in (("slurm", SLURM_FLAGS), ("ray", RAY_FLAGS)):
        given = [f for f in flags if getattr(args, f, None) not in (None, False)]
        if given and args.executor != executor:
            flag = "--" + given[0].replace("_", "-")
            raise InputError(f"{flag} applies to --executor {executor}; add --executor {executor} or drop {flag}")
    options: dict[str, Any] = {"executor": args.executor}
    if args.executor == "slurm" and (args.workers is not None or args.devices is not None):
        flag = "--workers" if args.workers is not None else "--devices"
        raise InputError(f"{flag} is for the local executor: a SLURM array runs --nodes x --tasks-per-node workers")
    if args.executor == "ray" and args.devices is not None:
        raise InputError("--devices is for the local executor: Ray gives each actor one GPU when the cluster has them")
    if args.executor == "slurm":
        from ct_tune.workers import SlurmOptions

        fields = {f: getattr(args, f) for f in SLURM_FLAGS[:9] if getattr(args, f) is not None}
        if args.time is not None:  # a bare number is minutes, as sbatch reads it
            seconds = float(args.time) * 60 if args.time.strip().isdigit() else parse_duration_flag("--time", args.time)
            fields["time_minutes"] = max(1, round(seconds / 60))
        fields["sbatch"] = dict(_sbatch_flag(item) for item in args.sbatch or ())
        fields["cluster"] = "local" if args.submitit_local else "slurm"
        options["slurm"] = SlurmOptions(**fields)
        options["wait"] = args.wait
    if args.executor == "ray":
        from ct_tune.workers import RayOptions

        fields = {f: getattr(args, f) for f in RAY_FLAGS if getattr(args, f) is not None}
        options["ray"] = RayOptions(workers=args.workers, **fields)
    return options


def _sbatch_flag(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key:
        raise InputError(f"--sbatch {item!r}: write FLAG=VALUE, e.g. --sbatch exclude=node7")
    return key, value.strip()


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
    return None if text is None else parse_duration_flag("--timeout", text)


def parse_duration_flag(flag: str, text: str) -> float:
    from ct_tune.search import parse_duration

    try:
        return parse_duration(text)
    except ValueError as error:
        raise InputError(f"{flag}: {error}") from None


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
            [
                f"{baseline['number']} ({status.get('baseline_label', 'ReLU')})",
                *(baseline["values"].get(n) for n in names),
                baseline["c"],
                "all 1.0" if status.get("baseline_label", "ReLU") == "ReLU" else profile_text(baseline["betas"]),
            ]
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
