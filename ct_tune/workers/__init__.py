"""Worker processes: planning them over devices, launching them on this machine, as a SLURM job array
(submitit) or as Ray actors, keeping their trials alive, stopping them cleanly. Nothing here knows what a
study is: ``ct_tune.search.worker`` is what a launch runs.
"""

from ct_tune.workers._events import EVENT_PREFIX, emit_event, parse_event, read_settings
from ct_tune.workers._heartbeats import Heartbeats, heartbeat_interval
from ct_tune.workers._interrupts import InterruptGuard, interrupt_on
from ct_tune.workers._launch import EXIT_DATABASE_LOST, EXIT_STUDY_DELETED, LaunchResult, check_log_dir, launch
from ct_tune.workers._plan import WorkerPlan, available_cores, check_cores, plan_workers
from ct_tune.workers._ray import RayOptions, connected, import_ray, launch_on_ray, local_cpus, plan_actors
from ct_tune.workers._slurm import SlurmOptions, SubmittedJob, import_submitit, job_state, submit_array

__all__ = [
    "EVENT_PREFIX",
    "EXIT_DATABASE_LOST",
    "EXIT_STUDY_DELETED",
    "Heartbeats",
    "InterruptGuard",
    "LaunchResult",
    "RayOptions",
    "SlurmOptions",
    "SubmittedJob",
    "WorkerPlan",
    "available_cores",
    "check_cores",
    "check_log_dir",
    "connected",
    "emit_event",
    "heartbeat_interval",
    "import_ray",
    "import_submitit",
    "interrupt_on",
    "job_state",
    "launch",
    "launch_on_ray",
    "local_cpus",
    "parse_event",
    "plan_actors",
    "plan_workers",
    "read_settings",
    "submit_array",
]
