"""Workers as a SLURM job array, submitted with submitit: one array element per node, one task (one worker)
per GPU of it.

What submitit pickles into the job folder (the callable and its settings) holds no password: storage URLs
travel as ``user@host`` in the settings, and the full URLs in the submitting process's environment, which
``sbatch`` hands to the job (``--export=ALL``, SLURM's default; the job script never lists it). A task
takes its GPU from the node's ``CUDA_VISIBLE_DEVICES`` by its local rank. Preemption and timeouts requeue
the element (submitit's checkpointing): its workers resume the study, and the trial a killed task was
running is failed by heartbeat and retried, as on one machine.

``cluster="local"`` runs the same jobs through submitit's local executor (real subprocesses on this
machine): the tests use it, and so can a user trying a SLURM setup before the cluster.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ct_tune._errors import InputError
from ct_tune._quiet import quiet_loggers
from ct_tune.workers._entry import resolve_entry

__all__ = ["SlurmOptions", "SubmittedJob", "import_submitit", "job_state", "submit_array"]

CLUSTERS = ("slurm", "local")


@dataclass(frozen=True)
class SlurmOptions:
    """The job array's shape and SLURM's placement flags (``None``: the cluster's default)."""

    nodes: int = 1  # array elements, one node each
    gpus_per_node: int = 0
    tasks_per_node: int | None = None  # workers per node (default: one per GPU, else 1)
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time_minutes: int = 240
    cluster: str = "slurm"  # "local": submitit's local executor on this machine
    sbatch: Mapping[str, str] = field(default_factory=dict)  # more #SBATCH flags, e.g. {"exclude": "node7"}

    @property
    def workers_per_node(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)

    def check(self) -> None:
        if self.nodes < 1:
            raise InputError(f"--nodes must be at least 1, not {self.nodes}")
        if self.time_minutes < 1:
            raise InputError(f"--time must be at least one minute, not {self.time_minutes} minute(s)")
        if self.gpus_per_node < 0:
            raise InputError(f"--gpus-per-node must be 0 or more, not {self.gpus_per_node}")
        if self.tasks_per_node is not None and self.tasks_per_node < 1:
            raise InputError(f"--tasks-per-node must be at least 1, not {self.tasks_per_node}")
        if self.gpus_per_node and self.workers_per_node > self.gpus_per_node:
            raise InputError(
                f"--tasks-per-node {self.tasks_per_node} is more than --gpus-per-node {self.gpus_per_node}: "
                "each worker takes one GPU"
            )
        if self.cluster not in CLUSTERS:
            raise InputError(f"SLURM cluster {self.cluster!r}: use one of {', '.join(CLUSTERS)}")
        if self.cluster == "local" and self.nodes > 1:
            raise InputError("the local executor has one node: use --nodes 1 (or a SLURM cluster)")


@dataclass(frozen=True)
class SubmittedJob:
    """One array element as recorded with the study (``study status`` asks its state from this)."""

    job_id: str
    cluster: str
    folder: str
    workers: list[int]
    submitted: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def import_submitit():
    try:
        import submitit
    except ImportError:
        raise InputError("--executor slurm needs submitit: pip install -c constraints.txt 'ct-tune[slurm]'") from None
    return submitit


class _NodeTask:
    """What one task of an array element runs: the worker of its local rank, on its GPU."""

    def __init__(self, target: str, gpus: int) -> None:
        self.target = target
        self.gpus = gpus

    def __call__(self, node_settings: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import submitit

        rank = submitit.JobEnvironment().local_rank
        visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
        if self.gpus and len(visible) >= len(node_settings):
            os.environ["CUDA_VISIBLE_DEVICES"] = visible[rank]  # before torch starts CUDA
        return resolve_entry(self.target)(dict(node_settings[rank]))

    def checkpoint(self, node_settings: Sequence[Mapping[str, Any]]):
        """Preempted or timed out: requeue the element with the same settings (the study resumes)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, node_settings)


def submit_array(
    target: str,
    settings: Sequence[Mapping[str, Any]],
    *,
    options: SlurmOptions,
    folder: Path,
    job_name: str,
    environment: Mapping[str, str],
) -> list[SubmittedJob]:
    """Submit ``settings`` (one per worker, password-free) as array elements of ``workers_per_node``
    tasks, each calling ``target`` (``"module:function"``) with its settings; ``environment`` (the full
    storage URLs) is exported to the jobs, never written."""
    submitit = import_submitit()
    per_node = options.workers_per_node
    nodes = [list(settings[i : i + per_node]) for i in range(0, len(settings), per_node)]
    folder.mkdir(parents=True, exist_ok=True)
    if options.cluster == "local":
        executor = submitit.LocalExecutor(folder=folder / "%j")
        executor.update_parameters(
            timeout_min=options.time_minutes, tasks_per_node=per_node, gpus_per_node=options.gpus_per_node
        )
    else:
        try:
            executor = submitit.SlurmExecutor(folder=folder / "%j")
        except RuntimeError:
            raise InputError(
                "--executor slurm: srun is not on this machine's PATH; submit from a SLURM login node"
            ) from None
        flags: dict[str, Any] = {
            "job_name": job_name,
            "time": options.time_minutes,
            "nodes": 1,
            "ntasks_per_node": per_node,
            "signal_delay_s": 120,
        }
        if options.gpus_per_node:
            flags["gpus_per_node"] = options.gpus_per_node
        if options.cpus_per_task:
            flags["cpus_per_task"] = options.cpus_per_task
        if options.mem_gb:
            flags["mem"] = f"{options.mem_gb:g}GB"
        for name in ("partition", "account", "qos", "constraint"):
            if getattr(options, name):
                flags[name] = getattr(options, name)
        if options.sbatch:
            flags["additional_parameters"] = dict(options.sbatch)
        executor.update_parameters(**flags)
    stamp = dt.datetime.now().isoformat(timespec="seconds")
    with _exported(environment), quiet_loggers("submitit"):
        try:
            jobs = executor.map_array(_NodeTask(target, options.gpus_per_node), nodes)
        except Exception as error:  # sbatch refused the job: its own words name the flag
            text = " ".join(str(error).split())[:400]
            raise InputError(f"SLURM refused the job array: {text}") from None
    return [
        SubmittedJob(
            job_id=str(job.job_id),
            cluster=options.cluster,
            folder=str(folder),
            workers=[int(s["worker"]) for s in node],
            submitted=stamp,
        )
        for job, node in zip(jobs, nodes, strict=True)
    ]


@contextlib.contextmanager
def _exported(environment: Mapping[str, str]) -> Iterator[None]:
    """``environment`` in this process's environment while jobs are submitted (sbatch and submitit's local
    executor hand it to the jobs), then as it was."""
    previous = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def job_state(job: Mapping[str, Any]) -> str:
    """A recorded job's state now: SLURM's word for it (from ``sacct``; UNKNOWN where there is none), or
    for the local executor RUNNING while its controller process lives, else FINISHED or ENDED (by its
    result file)."""
    try:
        import submitit
    except ImportError:
        return "UNKNOWN (submitit is not installed here)"
    folder = Path(job["folder"]) / "%j"
    if job["cluster"] == "local":
        pid = int(str(job["job_id"]).split("_")[0])
        if _alive(pid):
            return "RUNNING"
        result = submitit.local.local.LocalJob(folder, job["job_id"]).paths.result_pickle
        return "FINISHED" if result.exists() else "ENDED"
    try:
        with quiet_loggers("submitit", level=logging.CRITICAL):  # it warns on stdout when sacct fails
            return submitit.SlurmJob(folder, job["job_id"]).state
    except Exception:  # SLURM does not answer
        return "UNKNOWN"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by the launcher that waits for it) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True
