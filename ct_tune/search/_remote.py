"""Running a study's workers on a cluster engine: a SLURM job array (submitit) or Ray actors.

Both need stores every node reaches: a SQLite file (or a local MLflow store) is refused unless every
worker runs on this machine (submitit's local executor, a Ray instance started here). The launch
prepares the study as a local one does (budget as an absolute target, baseline/grid trials re-enqueued,
orphan runs closed), then hands the workers the same settings. Ray actors report through a queue, so the
progress view is the local one; SLURM jobs outlive the command: their ids are recorded with the study
(``study status`` shows which are alive) and ``wait`` follows the study's storage until they end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ct_tune._errors import InputError
from ct_tune.search._progress import Progress, TrialLine
from ct_tune.stores import STORAGE_ENV, TRACKING_ENV, is_tracking_server, redact, sqlite_path, without_password
from ct_tune.tracking.keys import ATTR_JOBS
from ct_tune.workers import (
    RayOptions,
    SlurmOptions,
    SubmittedJob,
    WorkerPlan,
    connected,
    job_state,
    launch_on_ray,
    plan_actors,
    submit_array,
)

if TYPE_CHECKING:
    from ct_tune.search._study import Study
    from ct_tune.workers import LaunchResult

__all__ = [
    "EXECUTORS",
    "check_shared_stores",
    "follow_jobs",
    "launch_ray",
    "recorded_jobs",
    "slurm_settings_note",
    "submit_slurm",
]

EXECUTORS = ("local", "slurm", "ray")
REMOTE_ENTRY = "ct_tune.search.worker:run_remote"  # what a SLURM task or a Ray actor calls
JOBS_SHOWN = 20
FOLLOW_SECONDS = 5.0


def check_shared_stores(study: Study, executor: str) -> None:
    """Refuse stores that only this machine can reach safely, naming what to use instead."""
    path = sqlite_path(study.storage_url)
    if path is not None:
        raise InputError(
            f"--executor {executor}: the Optuna storage is a SQLite file ({path}), which workers on other machines "
            "cannot share safely; use a PostgreSQL storage every node reaches (--storage postgresql://user@host/db)"
        )
    uri = study.tracking_uri
    if not is_tracking_server(uri) and not uri.startswith(("postgresql", "mysql", "mssql")):
        raise InputError(
            f"--executor {executor}: the MLflow store {redact(uri)} is on this machine's disk; use a database "
            "every node reaches (--tracking-uri postgresql://user@host/db) or an MLflow server (http://host:5000)"
        )


# --------------------------------------------------------------------------------------------------
# Ray
def launch_ray(
    study: Study,
    options: RayOptions,
    *,
    limit: int | None,
    settings: Callable[[WorkerPlan], dict[str, Any]],
    log_dir: Path,
    on_event: Callable[[int, dict[str, Any]], None],
    progress: Progress,
    on_plans: Callable[[list[WorkerPlan]], None],
    cpus: int,
) -> LaunchResult:
    """One actor per GPU or CPU slot on the Ray cluster (a local instance of ``cpus`` without an address)."""
    with connected(options, cpus=cpus) as ray:
        plans = plan_actors(ray, options, limit)
        on_plans(plans)
        where = options.address or "a Ray instance on this machine"
        progress.write(f"Ray: {len(plans)} actor(s) on {where} (up to {options.max_restarts} restart(s) each)")
        return launch_on_ray(
            ray, REMOTE_ENTRY, plans, settings=settings, options=options, log_dir=log_dir, on_event=on_event
        )


# --------------------------------------------------------------------------------------------------
# SLURM
def submit_slurm(
    study: Study,
    options: SlurmOptions,
    *,
    limit: int | None,
    settings: Callable[[WorkerPlan], dict[str, Any]],
    log_dir: Path,
) -> list[SubmittedJob]:
    """Submit one array element per node, one worker per GPU; the jobs are recorded with the study."""
    per_node = options.workers_per_node
    nodes = options.nodes if limit is None else min(options.nodes, math.ceil(limit / per_node))
    workers = nodes * per_node  # whole nodes: every element of an array has the same shape
    device = "cuda" if options.gpus_per_node else "cpu"
    threads = options.cpus_per_task or 1
    plans = [WorkerPlan(i, device, None, threads) for i in range(workers)]
    payloads = []
    for plan in plans:  # what submitit pickles into the job folder: no password in it
        payload = settings(plan)
        payload["storage_url"] = without_password(payload["storage_url"])
        payload["tracking_uri"] = without_password(payload["tracking_uri"])
        payloads.append(payload)
    environment = {STORAGE_ENV: study.storage_url, TRACKING_ENV: study.tracking_uri}
    jobs = submit_array(
        REMOTE_ENTRY,
        payloads,
        options=options,
        folder=log_dir / "slurm",
        job_name=f"ct-tune-{study.name}",
        environment=environment,
    )
    record_jobs(study, jobs)
    return jobs


def record_jobs(study: Study, jobs: list[SubmittedJob]) -> None:
    previous = study.optuna_study.user_attrs.get(ATTR_JOBS, [])
    study.optuna_study.set_user_attr(ATTR_JOBS, [*previous, *(job.to_dict() for job in jobs)][-100:])


def recorded_jobs(study: Study) -> list[dict[str, Any]]:
    """The study's most recent SLURM jobs, each with its state now."""
    jobs = study.optuna_study.user_attrs.get(ATTR_JOBS, [])[-JOBS_SHOWN:]
    return [{**job, "state": job_state(job)} for job in jobs]


def follow_jobs(study: Study, jobs: list[SubmittedJob], progress: Progress) -> list[dict]:
    """Show every trial that ends, read from the storage, until no job is pending or running any more;
    the jobs' final states."""
    from optuna.trial import TrialState

    ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    seen = {t.number for t in study.optuna_study.get_trials(deepcopy=False, states=ended)}
    records = [job.to_dict() for job in jobs]
    while True:
        states = [job_state(job) for job in records]
        for trial in study.optuna_study.get_trials(deepcopy=False, states=ended):
            if trial.number in seen:
                continue
            seen.add(trial.number)
            result = study.result_of(trial)
            line = TrialLine(
                trial.number, trial.state.name, result.seconds or 0.0, result.values, result.betas, result.c
            )
            progress.trial(line, line.describe(study.objective_names))
        if not any(state in ("RUNNING", "PENDING", "REQUEUED", "CONFIGURING", "COMPLETING") for state in states):
            return [{**job, "state": state} for job, state in zip(records, states, strict=True)]
        time.sleep(FOLLOW_SECONDS)


def slurm_settings_note(jobs: list[SubmittedJob]) -> str:
    """What the user can do next, in one line."""
    ids = sorted({job.job_id.split("_")[0] for job in jobs})
    cancel = "scancel " + " ".join(ids) if jobs and jobs[0].cluster == "slurm" else "kill " + " ".join(ids)
    return f"cancel with: {cancel}"
