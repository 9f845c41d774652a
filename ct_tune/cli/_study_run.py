"""``ct-tune study run`` (one worker in this process, or a launcher for several) and the hidden
``ct-tune study worker`` the launcher starts."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ct_tune._errors import InputError, StorageLost, WorkerFailed
from ct_tune.cli._common import CommandResult
from ct_tune.cli._study_common import Progress, open_study, parse_timeout, summary_result, tracker_for

INTERRUPTED = "interrupted (a trial that was running is marked FAIL). Resume with: ct-tune study run {name}"


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="study name, or the spec file it was created from")
    parser.add_argument(
        "--n-trials", type=int, help="finish this many more trials in this launch (default: the spec's budget)"
    )
    parser.add_argument("--timeout", help="stop starting trials after this long (seconds, or 30m, 2h)")
    add_worker_options(parser)


def add_worker_options(parser: argparse.ArgumentParser) -> None:
    """How trials are run: worker processes, devices, heartbeats, logs."""
    parser.add_argument("--workers", type=int, help="worker processes (default: one per GPU, else 1)")
    parser.add_argument("--devices", help="auto, cpu, or GPUs like cuda:0,cuda:1 (default: the spec's run.device)")
    parser.add_argument("--heartbeat", type=int, default=10, help="seconds between a worker's heartbeats (default 10)")
    parser.add_argument(
        "--grace", type=int, help="seconds without heartbeat before a trial counts as dead (default 2x)"
    )
    parser.add_argument("--log-dir", help="per-worker logs (default: logs/<study>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study")
    parser.add_argument("--worker", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--heartbeat", type=int, default=10)
    parser.add_argument("--grace", type=int)
    parser.add_argument("--target-total", type=int)
    parser.add_argument("--deadline", type=float)


# --------------------------------------------------------------------------------------------------
@dataclass
class RunOptions:
    """How to run a study: what ``study run`` and every stage of ``pipeline run`` take."""

    workers: int | None = None
    devices: str | None = None
    n_trials: int | None = None
    timeout: float | None = None
    heartbeat: int = 10
    grace: int | None = None
    log_dir: str | None = None
    progress: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunOptions:
        n_trials = getattr(args, "n_trials", None)
        if n_trials is not None and n_trials < 1:
            raise InputError(f"--n-trials must be at least 1, not {n_trials}")
        return cls(
            workers=args.workers,
            devices=args.devices,
            n_trials=n_trials,
            timeout=parse_timeout(getattr(args, "timeout", None)),
            heartbeat=args.heartbeat,
            grace=args.grace,
            log_dir=args.log_dir,
            progress=not args.no_progress,
        )


def run(args: argparse.Namespace) -> CommandResult:
    info = open_study(args)
    finished, failed, reason = run_study(info, tracker_for(args, info), RunOptions.from_args(args))
    return summary_result(info, reason, finished, failed)


def run_study(info, tracker, options: RunOptions) -> tuple[int, int, str]:
    """Prepare the study once, then run one worker here or launch several; (finished, failed, why it stopped)."""
    from ct_tune.study import close_orphan_runs, counts, requeue_initial_trials
    from ct_tune.workers import plan_workers

    spec = info.spec
    plans = plan_workers(options.workers, options.devices or spec.run.device)
    state = counts(info)
    finished = state.get("COMPLETE", 0) + state.get("PRUNED", 0)
    target = finished + options.n_trials if options.n_trials is not None else spec.budget.n_trials
    timeout = options.timeout if options.timeout is not None else spec.budget.timeout
    if target is not None and finished >= target:
        return 0, 0, f"budget already reached ({finished} trials); use --n-trials to run more"

    # Done once, before any worker starts: workers racing on these would duplicate them.
    requeued = requeue_initial_trials(info)
    closed = close_orphan_runs(info, tracker)
    progress = Progress(total=None if target is None else target - finished, enabled=options.progress)
    if requeued:
        progress.write(f"enqueued {requeued} baseline/grid trial(s) again: their earlier attempt failed")
    if closed:
        progress.write(f"closed {closed} MLflow run(s) left RUNNING by a worker that stopped")
    deadline = None if timeout is None else time.time() + timeout
    target_text = target if target is not None else "none"
    progress.write(
        f"study {info.name}: {len(info.units)} {spec.search.granularity} units, {finished} trial(s) finished, "
        f"target {target_text}" + (f", timeout {timeout:.0f}s" if timeout else "") + f", {len(plans)} worker(s)"
    )
    try:
        if len(plans) == 1:
            return _run_here(options, info, tracker, plans[0], target, deadline, progress)
        return _launch(options, info, tracker, plans, target, deadline, progress)
    except KeyboardInterrupt:
        progress.close()
        print(f"ct-tune: {INTERRUPTED.format(name=info.name)}", file=sys.stderr)
        raise
    finally:
        progress.close()


def _run_here(options: RunOptions, info, tracker, plan, target, deadline, progress) -> tuple[int, int, str]:
    from ct_tune.runner import RunSettings, TrialRunner, describe_trial
    from ct_tune.session import StudyBench

    device = "cpu" if plan.device == "cpu" else f"cuda:{plan.visible_gpu}"
    session = _open_session(info, device)
    progress.write(f"worker 0 on {session.device_label}")
    names = info.objective_names
    settings = RunSettings(
        target_total=target,
        deadline=deadline,
        heartbeat_interval=options.heartbeat,
        grace_period=options.grace,
        on_trial=lambda line: progress.trial(line, describe_trial(line, names)),
    )
    try:
        summary = TrialRunner(info, StudyBench(session), tracker, settings).run()
    finally:
        session.close()
    return summary.finished, summary.failed, summary.reason


def _launch(options: RunOptions, info, tracker, plans, target, deadline, progress) -> tuple[int, int, str]:
    from ct_tune.runner import describe_trial, refresh_study_plots
    from ct_tune.storage import redact
    from ct_tune.workers import EXIT_DATABASE_LOST, launch

    names = info.objective_names
    log_dir = Path(options.log_dir or f"logs/{info.name}")

    def on_event(index: int, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "ready":
            progress.write(f"worker {index} ready on {event.get('device')} (pid {event.get('pid')})")
        elif kind == "trial":
            progress.trial(event, f"[w{index}] " + describe_trial(event, names))

    result = launch(
        info.name,
        plans,
        storage_url=info.storage_url,
        tracking_uri=tracker.tracking_uri,
        target_total=target,
        deadline=deadline,
        heartbeat=options.heartbeat,
        grace=options.grace,
        log_dir=log_dir,
        on_event=on_event,
    )
    if result.interrupted:
        raise KeyboardInterrupt
    finished = sum(s.get("finished", 0) for s in result.summaries.values())
    failed = sum(s.get("failed", 0) for s in result.summaries.values())
    lost = [i for i, code in result.exit_codes.items() if code == EXIT_DATABASE_LOST]
    if lost:
        raise StorageLost(
            f"{len(lost)} worker(s) lost the database {redact(info.storage_url)}; run 'ct-tune study run "
            f"{info.name}' again once it is back: the study resumes (logs: {result.log_files[lost[0]]})"
        )
    broken = {i: code for i, code in result.exit_codes.items() if code != 0}
    if broken:
        finished_total = _finished(info)
        lines = [f"worker {i} {_exit_text(code)}; see {result.log_files[i]}" for i, code in broken.items()]
        if target is None or finished_total < target:
            raise WorkerFailed("; ".join(lines) + f" ({finished_total} of {target} trials finished)")
        for line in lines:  # the others finished the budget (its trial was retried): the job is done
            progress.write(f"warning: {line}")
    refresh_study_plots(info, tracker)
    reasons = {s.get("reason", "") for s in result.summaries.values()}
    return finished, failed, ", ".join(sorted(r for r in reasons if r)) or "done"


def _finished(info) -> int:
    from ct_tune.storage import database_cause, database_reason, is_database_error, redact
    from ct_tune.study import count_states

    try:
        states = count_states(info.storage, info.study_id)
    except Exception as error:
        if not is_database_error(error):
            raise
        reason = database_reason(database_cause(error))
        raise StorageLost(
            f"the Optuna storage {redact(info.storage_url)} stopped answering ({reason}); "
            f"run 'ct-tune study run {info.name}' again once it is back: the study resumes"
        ) from None
    return states["COMPLETE"] + states["PRUNED"]


def _exit_text(code: int) -> str:
    if code < 0:
        import signal

        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _open_session(info, device: str):
    from ct_tune.session import Session

    session = Session.open(info.spec, device=device)
    expected = info.meta.get("fingerprint")
    if expected and session.trace.fingerprint != expected:
        session.close()
        raise InputError(
            f"the model now applies ReLU at other places than when study {info.name!r} was created "
            "(different architecture or checkpoint); create a new study for it"
        )
    return session


# --------------------------------------------------------------------------------------------------
def worker(args: argparse.Namespace) -> CommandResult:
    """One worker of a launch: report each trial as an event line on stdout, logs on stderr."""
    from ct_tune.runner import RunSettings, TrialRunner
    from ct_tune.session import StudyBench
    from ct_tune.workers import emit_event

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    info = open_study(args)
    tracker = tracker_for(args, info)
    session = _open_session(info, args.device)
    emit_event("ready", device=session.device_label, pid=os.getpid())
    settings = RunSettings(
        target_total=args.target_total,
        deadline=args.deadline,
        worker=args.worker,
        heartbeat_interval=args.heartbeat,
        grace_period=args.grace,
        refresh_plots=False,  # the launcher draws the study's plots once at the end
        on_trial=lambda line: emit_event("trial", **line),
    )
    try:
        summary = TrialRunner(info, StudyBench(session), tracker, settings).run()
    finally:
        session.close()
    emit_event(
        "summary",
        finished=summary.finished,
        failed=summary.failed,
        discarded=summary.discarded,
        reason=summary.reason,
        seconds=summary.seconds,
    )
    return CommandResult({}, emitted=True)
