"""One worker of a study: ``python -m ct_tune.search.worker`` with its settings as one JSON document on stdin.

The launcher (``Study.run`` with several workers) starts one per planned worker; the SLURM and Ray
executors call :func:`run_remote` in their jobs and actors with the same settings. The worker loads the
model and data once, checks they are what the study was created with, then pulls trials until the
study's target is reached by all workers together. It reports each finished trial as an event line on
stdout; its logs go to stderr. Storage URLs (with any password) travel in the settings, never on the
command line.

Exit codes: 0 done, 1 the launcher went away (it stops after ending its trial), 2 bad input (one line on
stderr), 3 the database went away, 130 interrupted.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from ct_tune._errors import CTTuneError
from ct_tune.search._run import WorkerSettings
from ct_tune.stores import STORAGE_ENV, TRACKING_ENV, without_password
from ct_tune.workers import emit_event, read_settings

__all__ = ["WorkerSettings", "main", "run_remote", "run_worker"]


def run_worker(
    settings: WorkerSettings,
    *,
    launcher_pid: int | None = None,
    emit: Callable[..., None] = emit_event,
    keep_going: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Run trials until the target is reached; the worker's summary (also emitted as its last event).

    With ``launcher_pid``, the worker stops before its next trial once that process is no longer its parent
    (the launcher died: nobody would relay or count its trials); ``keep_going`` is any other such check.
    ``emit(kind, **fields)`` carries its events: stdout lines here, a queue in a Ray actor."""
    if launcher_pid is not None:
        keep_going = lambda: os.getppid() == launcher_pid  # noqa: E731
    if settings.cwd and os.path.isdir(settings.cwd):  # relative paths in the spec mean what they meant there
        os.chdir(settings.cwd)
    for entry in reversed(settings.sys_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    from ct_tune.bench import Bench
    from ct_tune.search._loop import LoopSettings, TrialLoop
    from ct_tune.search._study import load_study

    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
    study = load_study(settings.study, storage=settings.storage_url, tracking_uri=settings.tracking_uri)
    tracker = study.tracker  # MLflow is reachable (and imported) before the worker says it is ready
    recorded = study.meta.get("data")  # the cached splits holding these values are read, not decoded again
    with Bench.open(
        study.spec, **study.spec.grouping, device=settings.device, prepare=False, recorded=recorded
    ) as bench:
        bench.check_identity(study.meta, study.name)
        loop = LoopSettings(
            target_total=settings.target_total,
            deadline=settings.deadline,
            worker=settings.worker,
            heartbeat_interval=settings.heartbeat,
            grace_period=settings.grace,
            refresh_plots=False,  # the launcher draws the study's plots once at the end
            on_trial=lambda line: emit("trial", **line.to_dict()),
            keep_going=keep_going,
            owns_parent_run=settings.owns_parent_run,  # a launcher spans the parent run over its workers
        )
        trials = TrialLoop(study, bench, tracker, loop)
        emit("ready", device=bench.device_label, pid=os.getpid(), host=socket.gethostname())
        summary = trials.run()
    payload = summary.counts()
    emit("summary", **payload)
    return payload


def run_remote(
    settings: dict[str, Any],
    *,
    emit: Callable[..., None] | None = None,
    keep_going: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """A worker in a SLURM job or a Ray actor. The settings hold the storage URLs without their password;
    the full URLs come from the job's environment (``$CT_TUNE_STORAGE``, ``$MLFLOW_TRACKING_URI``) when
    they name the same store, else libpq finds the password (``~/.pgpass``, ``PGPASSWORD``)."""
    _log_to_stderr()
    parsed = WorkerSettings.from_dict(settings)
    _name_connections(parsed.worker)
    parsed.storage_url = _with_secret(parsed.storage_url, os.environ.get(STORAGE_ENV))
    parsed.tracking_uri = _with_secret(parsed.tracking_uri, os.environ.get(TRACKING_ENV))
    return run_worker(parsed, emit=emit or _log_event, keep_going=keep_going)


def _with_secret(url: str, from_environment: str | None) -> str:
    if from_environment and without_password(from_environment) == without_password(url):
        return from_environment
    return url


def _name_connections(worker: int) -> None:
    """Label this process's database connections ``ct-tune worker N`` (PostgreSQL's ``application_name``,
    from ``$PGAPPNAME``, which libpq reads at each connect): ``pg_stat_activity`` then shows what each
    worker holds. A name the user set is kept."""
    os.environ.setdefault("PGAPPNAME", f"ct-tune worker {worker}")


def _log_event(kind: str, **payload: Any) -> None:
    """A SLURM task has nobody to relay events to: its trials go to its log, the study to the storage."""
    log = logging.getLogger("ct_tune")
    if kind == "ready":
        log.info("worker ready on %s (pid %s, host %s)", payload["device"], payload["pid"], payload["host"])
    elif kind == "trial":
        log.info("trial %s %s %s", payload["number"], payload["state"], payload["values"])


def _log_to_stderr() -> None:
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("ct_tune")
    if not root.handlers:  # a Ray actor may have set its log file already
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)
        root.propagate = False
    logging.getLogger("mlflow").setLevel(logging.WARNING)


def main() -> int:
    _log_to_stderr()
    settings = WorkerSettings.from_dict(read_settings())
    _name_connections(settings.worker)
    try:
        summary = run_worker(settings, launcher_pid=os.getppid())
    except KeyboardInterrupt:
        print("ct-tune worker: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the launcher is gone; the trial that was ending is told and recorded already
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return _launcher_gone()
    except CTTuneError as error:
        print(f"ct-tune: error: {' '.join(str(error).split())}", file=sys.stderr)
        return error.exit_code
    return _launcher_gone() if summary["reason"] == "the launcher is gone" else 0


def _launcher_gone() -> int:
    print("ct-tune worker: the launcher is gone; stopped after ending its trial", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
