"""One worker of a study: ``python -m ct_tune.search.worker`` with its settings as one JSON document on stdin.

The launcher (``Study.run`` with several workers) starts one per planned worker; a cluster executor can
call :func:`run_worker` with the same settings. The worker loads the model and data once, checks they are
what the study was created with, then pulls trials until the study's target is reached by all workers
together. It reports each finished trial as an event line on stdout; its logs go to stderr. Storage URLs
(with any password) travel in the settings, never on the command line.

Exit codes: 0 done, 1 the launcher went away (it stops after ending its trial), 2 bad input (one line on
stderr), 3 the database went away, 130 interrupted.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from ct_tune._errors import CTTuneError
from ct_tune.search._run import WorkerSettings
from ct_tune.workers import emit_event, read_settings

__all__ = ["WorkerSettings", "main", "run_worker"]


def run_worker(settings: WorkerSettings, *, launcher_pid: int | None = None) -> dict[str, Any]:
    """Run trials until the target is reached; the worker's summary (also emitted as its last event).

    With ``launcher_pid``, the worker stops before its next trial once that process is no longer its parent
    (the launcher died: nobody would relay or count its trials)."""
    for entry in reversed(settings.sys_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    from ct_tune.search._bench import Bench
    from ct_tune.search._loop import LoopSettings, TrialLoop
    from ct_tune.search._study import load_study

    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
    study = load_study(settings.study, storage=settings.storage_url, tracking_uri=settings.tracking_uri)
    tracker = study.tracker  # MLflow is reachable (and imported) before the worker says it is ready
    with Bench.open(study.spec, device=settings.device, prepare=False) as bench:
        bench.check_identity(study.meta, study.name)
        loop = LoopSettings(
            target_total=settings.target_total,
            deadline=settings.deadline,
            worker=settings.worker,
            heartbeat_interval=settings.heartbeat,
            grace_period=settings.grace,
            refresh_plots=False,  # the launcher draws the study's plots once at the end
            on_trial=lambda line: emit_event("trial", **line),
            keep_going=None if launcher_pid is None else lambda: os.getppid() == launcher_pid,
            owns_parent_run=launcher_pid is None,  # a launcher spans the study's parent run over its workers
        )
        trials = TrialLoop(study, bench, tracker, loop)
        emit_event("ready", device=bench.device_label, pid=os.getpid())
        summary = trials.run()
    payload = {
        "finished": summary.finished,
        "failed": summary.failed,
        "discarded": summary.discarded,
        "reason": summary.reason,
        "seconds": summary.seconds,
    }
    emit_event("summary", **payload)
    return payload


def main() -> int:
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("ct_tune")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    settings = WorkerSettings.from_dict(read_settings())
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
