"""Running a study: one launch, with one worker in this process or several worker processes.

Before any worker starts, the launch does once what workers racing on it would duplicate: it turns the
budget into an absolute number of finished trials and repairs what earlier launches left (``_repair``).
Then it runs the trial loop here (one worker), starts ``python -m ct_tune.search.worker`` per planned
worker, places actors on Ray or submits a SLURM job array, and relays their trials to one progress view.
Optuna and MLflow are told in the same order either way.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ct_tune._errors import InputError, StorageLost, StoreFailed, StudyDeleted, WorkerFailed
from ct_tune._names import default_log_dir
from ct_tune._quiet import quiet_loggers
from ct_tune.search._budget import storage_failure
from ct_tune.search._loop import WorkerSummary, deleted_message
from ct_tune.search._progress import Progress, TrialLine
from ct_tune.search._remote import (
    EXECUTORS,
    check_shared_stores,
    follow_jobs,
    launch_ray,
    slurm_settings_note,
    submit_slurm,
)
from ct_tune.search._repair import close_orphan_runs, requeue_initial_trials
from ct_tune.stores import check_writable, count_states, is_database_error, redact
from ct_tune.workers import (
    EXIT_DATABASE_LOST,
    EXIT_STUDY_DELETED,
    LaunchResult,
    RayOptions,
    SlurmOptions,
    WorkerPlan,
    check_cores,
    check_log_dir,
    import_ray,
    import_submitit,
    launch,
    local_cpus,
    plan_workers,
)

if TYPE_CHECKING:
    from ct_tune.search._study import Study

__all__ = ["INTERRUPTED", "RunOptions", "RunSummary", "WorkerSettings", "run_study"]

logger = logging.getLogger(__name__)

WORKER_MODULE = "ct_tune.search.worker"
DEFAULT_GRACE_SECONDS = 60
INTERRUPTED = "interrupted (a trial that was running is marked FAIL). Resume with: ct-tune study run {name}"


@dataclass
class RunOptions:
    """How to run a study: what ``Study.run``, ``study run`` and every stage of a pipeline take."""

    workers: int | None = 1  # None: one per GPU of ``devices``, else 1
    devices: str | None = None  # default: the spec's run.device
    n_trials: int | None = None  # more trials in this launch (default: the spec's budget, in total)
    timeout: float | None = None  # seconds (default: the spec's budget.timeout)
    heartbeat: int = 10
    grace: int | None = None  # default: max(60, 3 x heartbeat), see grace_period
    log_dir: str | None = None
    progress: bool = True
    oversubscribe: bool = False  # more CPU workers than cores: refused unless set (then a warning)
    executor: str = "local"  # local processes, a SLURM job array (submitit) or Ray actors
    slurm: SlurmOptions | None = None  # the job array's shape (executor slurm)
    ray: RayOptions | None = None  # the Ray cluster and actors (executor ray)
    wait: bool = False  # executor slurm: follow the jobs until they end (else return once submitted)

    @property
    def grace_period(self) -> int:
        """Seconds without a heartbeat before a trial counts as dead. Optuna's default (2 x heartbeat) let
        other workers fail live trials on an overloaded machine; a dead worker's trial now waits a minute."""
        return self.grace if self.grace is not None else max(DEFAULT_GRACE_SECONDS, 3 * self.heartbeat)

    def check(self) -> None:
        if self.n_trials is not None and self.n_trials < 1:
            raise InputError(f"--n-trials must be at least 1, not {self.n_trials}")
        if self.timeout is not None and (not math.isfinite(self.timeout) or self.timeout <= 0):
            raise InputError(f"--timeout must be positive, not {self.timeout!r}")
        if self.heartbeat < 1:
            raise InputError(f"--heartbeat must be at least 1 second, not {self.heartbeat}")
        if self.grace is not None and self.grace <= self.heartbeat:
            raise InputError(f"--grace ({self.grace} s) must be longer than --heartbeat ({self.heartbeat} s)")
        if self.log_dir is not None:  # before anything runs or prints
            check_log_dir(Path(self.log_dir))
        if self.executor not in EXECUTORS:
            raise InputError(f"--executor {self.executor!r}: use one of {', '.join(EXECUTORS)}")
        for name in ("slurm", "ray"):
            if getattr(self, name) is not None and self.executor != name:  # a flag of another executor
                raise InputError(f"{name} options were given to executor {self.executor}: use --executor {name}")
        if self.wait and self.executor != "slurm":
            raise InputError("--wait follows SLURM jobs: add --executor slurm (the other executors always wait)")
        if self.executor == "slurm":
            self.slurm = self.slurm or SlurmOptions()
            self.slurm.check()
            import_submitit()
        if self.executor == "ray":
            self.ray = self.ray or RayOptions(workers=self.workers)
            self.ray.check()
            import_ray()

    @property
    def remote(self) -> bool:
        """Workers may run on other machines: the stores must be ones every node reaches."""
        if self.executor == "slurm":
            return self.slurm is not None and self.slurm.cluster != "local"
        return self.executor == "ray" and self.ray is not None and self.ray.address is not None


@dataclass
class WorkerSettings:
    study: str
    storage_url: str
    tracking_uri: str
    worker: int = 0
    device: str = "cpu"  # what torch is given: cpu, or cuda (the launcher pins the GPU with CUDA_VISIBLE_DEVICES)
    threads: int | None = None  # torch intra-op threads
    target_total: int | None = None  # finished trials the study should reach, over all workers
    deadline: float | None = None  # time.time() after which no trial starts
    heartbeat: int = 10
    grace: int | None = None
    sys_path: list[str] = field(default_factory=list)  # the launcher's import path: user packages import here too
    cwd: str | None = None  # the launcher's directory: a worker elsewhere (Ray, SLURM) works from it when it exists
    owns_parent_run: bool = True  # sets the study's parent run RUNNING, then ends it (False: a launcher does)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerSettings:
        known = set(cls.__dataclass_fields__)
        missing = [key for key in ("study", "storage_url", "tracking_uri") if not isinstance(data.get(key), str)]
        if missing:
            raise SystemExit(
                f"ct-tune worker: the settings lack {', '.join(missing)} (strings); start workers with Study.run"
            )
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass
class RunSummary:
    """What one launch did."""

    study: str
    reason: str  # why it stopped: budget reached, timeout, budget already reached, ...
    finished: int = 0  # trials finished (COMPLETE + PRUNED) in this launch, over all workers
    failed: int = 0
    discarded: int = 0
    workers: int = 0
    # seconds per kind of work, summed over workers: evaluate, tracking (MLflow), optuna
    seconds: dict[str, float] = field(default_factory=lambda: {"evaluate": 0.0, "tracking": 0.0, "optuna": 0.0})
    trials: list[TrialLine] = field(default_factory=list)  # one line per trial of this launch
    jobs: list[dict[str, Any]] = field(default_factory=list)  # SLURM jobs submitted (executor slurm)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "trials": [line.to_dict() for line in self.trials]}

    @classmethod
    def of_workers(
        cls, study: str, workers: int, summaries: list[WorkerSummary], trials: list[TrialLine]
    ) -> RunSummary:
        """The launch's summary from its workers' (their reasons, counts and seconds added up)."""
        seconds = {"evaluate": 0.0, "tracking": 0.0, "optuna": 0.0}
        for summary in summaries:
            for kind, value in summary.seconds.items():
                seconds[kind] = seconds.get(kind, 0.0) + float(value)
        return cls(
            study,
            ", ".join(sorted({s.reason for s in summaries if s.reason})) or "done",
            finished=sum(s.finished for s in summaries),
            failed=sum(s.failed for s in summaries),
            discarded=sum(s.discarded for s in summaries),
            workers=workers,
            seconds=seconds,
            trials=trials,
        )


@dataclass
class _Launch:
    """One launch, planned before anything is written: its workers and where the study should get to."""

    options: RunOptions
    plans: list[WorkerPlan]  # local workers (Ray adds its actors once placed)
    finished: int  # trials finished before this launch
    target: int | None  # finished trials to reach (None: no trial target)
    timeout: float | None  # seconds
    crowded: str | None  # the warning of a machine given more CPU workers than cores
    ray_cpus: int = 0  # the CPUs of a Ray instance started here
    progress: Progress | None = None
    started: float = field(default_factory=time.time)

    @property
    def deadline(self) -> float | None:
        """time.time() after which no trial starts."""
        return None if self.timeout is None else self.started + self.timeout

    @property
    def left(self) -> int | None:
        return None if self.target is None else self.target - self.finished

    def say(self, text: str) -> None:
        assert self.progress is not None
        self.progress.write(text)


def run_study(study: Study, options: RunOptions) -> RunSummary:
    """Prepare the study once, then run one worker here, launch several, or place them on a cluster."""
    options.check()
    if options.remote:
        check_shared_stores(study, options.executor)
    check_writable(study.storage_url, what="Optuna storage")  # reading alone passed: the first write failed mid-run
    check_writable(study.tracking_uri, what="MLflow tracking store")
    planned = _plan(study, options)
    if planned.target is not None and planned.finished >= planned.target:
        reason = f"budget already reached ({planned.finished} trials); use --n-trials to run more"
        return RunSummary(study.name, reason)
    tracker = study.tracker
    planned.progress = Progress(total=planned.left, bar=options.progress)
    _before_workers(study, planned)
    lost = False
    # The parent run spans the launches: RUNNING from before the first worker starts until after the
    # last one ends and its runs are closed, then ended with this launch's end time.
    tracker.set_status(study.parent_run_id, "RUNNING")
    status = "FAILED"
    try:
        if options.executor == "slurm":
            summary = _submit(study, planned)
        elif options.executor == "local" and len(planned.plans) == 1:
            summary = _run_here(study, planned)
        else:
            summary = _launch(study, planned)
        # submitted SLURM jobs run on: their workers end the parent run (owns_parent_run)
        status = "RUNNING" if options.executor == "slurm" and not options.wait else "FINISHED"
    except KeyboardInterrupt as stop:  # the CLI prints the line, once
        status = "KILLED"
        raise KeyboardInterrupt(str(stop) or INTERRUPTED.format(name=study.name)) from None
    except (StorageLost, StudyDeleted):  # a lost database: the next launch closes them; a deleted study: done
        lost = True
        raise
    finally:
        planned.progress.close()
        if not lost:  # a lost database: the next launch closes them, and ends the parent run
            _close_orphans_at_the_end(study)
            with quiet_loggers("mlflow", level=logging.CRITICAL):
                tracker.set_status(study.parent_run_id, status)
    return summary


def _plan(study: Study, options: RunOptions) -> _Launch:
    """The workers and the target of a launch; refuses a crowded machine before anything is written."""
    spec = study.spec
    local = options.executor == "local"
    devices = options.devices or spec.run.device
    plans = plan_workers(options.workers, devices) if local else []
    states = study.counts()
    finished = states.get("COMPLETE", 0) + states.get("PRUNED", 0)
    target = finished + options.n_trials if options.n_trials is not None else spec.budget.n_trials
    timeout = options.timeout if options.timeout is not None else spec.budget.timeout
    if local and target is not None and 0 < target - finished < len(plans):  # a worker with no trial costs a start
        plans = plan_workers(target - finished, devices)
    crowded = check_cores(plans, oversubscribe=options.oversubscribe)
    ray_cpus = 0
    if options.executor == "ray" and options.ray.address is None:  # a Ray instance here: the same rule
        ray_cpus, crowded = local_cpus(options.ray, oversubscribe=options.oversubscribe)
    return _Launch(options, plans, finished, target, timeout, crowded, ray_cpus)


def _before_workers(study: Study, planned: _Launch) -> None:
    """Done once, before any worker starts (workers racing on these would duplicate them), and said."""
    requeued = requeue_initial_trials(study)
    closed = close_orphan_runs(study)
    if planned.crowded:
        planned.say(planned.crowded)
    if requeued:
        planned.say(f"enqueued {requeued} baseline/grid trial(s) again: their earlier attempt failed")
    if closed:
        planned.say(f"closed {closed} MLflow run(s) left RUNNING by a worker that stopped")
    options, timeout = planned.options, planned.timeout
    target = planned.target if planned.target is not None else "none"
    placement = f"{len(planned.plans)} worker(s)" if options.executor == "local" else f"executor {options.executor}"
    planned.say(
        f"study {study.name}: {len(study.units)} {study.spec.search.granularity} units, {planned.finished} trial(s) "
        f"finished, target {target}" + (f", timeout {timeout:.0f}s" if timeout else "") + f", {placement}"
    )


def _close_orphans_at_the_end(study: Study) -> None:
    """The end of every launch closes what its workers left RUNNING; it never hides why the launch ended."""
    try:
        with quiet_loggers("mlflow", level=logging.CRITICAL):  # MLflow logs a failed query with its traceback
            closed = close_orphan_runs(study)
    except Exception as error:  # the database or MLflow is gone: the next launch closes them
        logger.debug("could not close orphan MLflow runs: %s", error)
        return
    if closed:
        logger.warning("closed %d MLflow run(s) left RUNNING by a worker that stopped", closed)


def _run_here(study: Study, planned: _Launch) -> RunSummary:
    from ct_tune.bench import Bench
    from ct_tune.search._loop import LoopSettings, TrialLoop

    plan, options, progress = planned.plans[0], planned.options, planned.progress
    assert progress is not None
    device = "cpu" if plan.device == "cpu" else f"cuda:{plan.visible_gpu}"
    with Bench.open(study.spec, **study.spec.grouping, device=device) as bench:
        bench.check_identity(study.meta, study.name)
        progress.write(f"worker 0 on {bench.device_label}")
        names = study.objective_names
        settings = LoopSettings(
            target_total=planned.target,
            deadline=planned.deadline,
            heartbeat_interval=options.heartbeat,
            grace_period=options.grace_period,
            on_trial=lambda line: progress.trial(line, line.describe(names)),
            owns_parent_run=False,  # run_study spans it
        )
        worker = TrialLoop(study, bench, study.tracker, settings).run()
    return RunSummary.of_workers(study.name, 1, [worker], worker.trials)


def _worker_settings(study: Study, planned: _Launch) -> Callable[[WorkerPlan], dict[str, Any]]:
    """What every worker is handed, whatever runs it."""
    options = planned.options

    def settings(plan: WorkerPlan) -> dict[str, Any]:
        return WorkerSettings(
            study=study.name,
            storage_url=study.storage_url,
            tracking_uri=study.tracking_uri,
            worker=plan.index,
            device=plan.device,
            threads=plan.threads,
            target_total=planned.target,
            deadline=planned.deadline,
            heartbeat=options.heartbeat,
            grace=options.grace_period,
            sys_path=list(sys.path),
            cwd=os.getcwd(),
            owns_parent_run=options.executor == "slurm" and not options.wait,  # jobs that outlive the launch
        ).to_dict()

    return settings


def _launch(study: Study, planned: _Launch) -> RunSummary:
    """Worker processes here, or actors on Ray; their trials relayed to the progress view."""
    from ct_tune.bench import prepare_data
    from ct_tune.search._record import refresh_study_plots

    prepare_data(study.spec, recorded=study.meta.get("data"), study=study.name)  # once here; workers map it
    options, progress = planned.options, planned.progress
    assert progress is not None
    names = study.objective_names
    log_dir = default_log_dir(options.log_dir, study.name)
    lines: list[TrialLine] = []

    def on_event(index: int, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "ready":
            progress.write(f"worker {index} ready on {event.get('device')} (pid {event.get('pid')})")
        elif kind == "trial":
            line = TrialLine.from_dict(event)
            lines.append(line)
            progress.trial(line, f"[w{index}] " + line.describe(names))

    settings = _worker_settings(study, planned)
    if options.executor == "ray":
        result = launch_ray(
            study,
            options.ray,
            limit=planned.left,
            settings=settings,
            log_dir=log_dir,
            on_event=on_event,
            progress=progress,
            on_plans=lambda placed: planned.plans.extend(placed),
            cpus=planned.ray_cpus,
        )
    else:
        result = launch(WORKER_MODULE, planned.plans, settings=settings, log_dir=log_dir, on_event=on_event)
    _check_ended(study, planned, result)
    refresh_study_plots(study, study.tracker)
    summaries = [WorkerSummary.from_counts(summary) for summary in result.summaries.values()]
    return RunSummary.of_workers(study.name, len(planned.plans), summaries, lines)


def _check_ended(study: Study, planned: _Launch, result: LaunchResult) -> None:
    """Raise what the launch's end means: Ctrl-C, a lost database, workers that failed before the target."""
    if result.interrupted and planned.options.executor == "ray":
        happened = (
            "the actors were killed: their running trials fail by heartbeat on the next run"
            if result.killed
            else "the actors ended their running trials"
        )
        raise KeyboardInterrupt(f"interrupted ({happened}). Resume with: ct-tune study run {study.name}")
    if result.interrupted:
        raise KeyboardInterrupt
    if EXIT_STUDY_DELETED in result.exit_codes.values():
        raise StudyDeleted(deleted_message(study.name))
    lost = [i for i, code in result.exit_codes.items() if code == EXIT_DATABASE_LOST]
    if lost:
        raise StorageLost(
            f"{len(lost)} worker(s) lost the database {redact(study.storage_url)}; run 'ct-tune study run "
            f"{study.name}' again once it is back: the study resumes (logs: {result.log_files[lost[0]]})"
        )
    broken = {i: code for i, code in result.exit_codes.items() if code != 0}
    for i in broken:  # a store that failed for good: the worker's one line says what to do, so the launcher does
        line = _store_failure_line(result.log_files.get(i))
        if line is not None:
            raise StoreFailed(f"worker {i}: {line} (logs: {result.log_files[i]})")
    if broken:
        finished_total = _finished(study)
        texts = [f"worker {i} {_exit_text(code)}; see {result.log_files[i]}" for i, code in broken.items()]
        if planned.target is None or finished_total < planned.target:
            raise WorkerFailed("; ".join(texts) + f" ({finished_total} of {planned.target} trials finished)")
        for text in texts:  # the others finished the budget (its trial was retried): the job is done
            planned.say(f"warning: {text}")


def _submit(study: Study, planned: _Launch) -> RunSummary:
    """Submit the SLURM job array; with ``wait``, follow the study until the jobs end."""
    from ct_tune.bench import prepare_data

    # once, here: the jobs read what it wrote (a shared disk on a cluster), and map the cache where it is shared
    prepare_data(study.spec, recorded=study.meta.get("data"), study=study.name)
    options, progress = planned.options, planned.progress
    assert progress is not None
    log_dir = default_log_dir(options.log_dir, study.name)
    before = study.counts()
    settings = _worker_settings(study, planned)
    jobs = submit_slurm(study, options.slurm, limit=planned.left, settings=settings, log_dir=log_dir)
    workers = sum(len(job.workers) for job in jobs)
    ids = ", ".join(job.job_id for job in jobs)
    progress.write(f"submitted {len(jobs)} job(s) ({workers} worker(s)): {ids}; logs in {log_dir / 'slurm'}")
    progress.write(f"watch with: ct-tune study status {study.name}; {slurm_settings_note(jobs)}")
    records = [job.to_dict() for job in jobs]
    if not options.wait:
        return RunSummary(study.name, f"submitted {len(jobs)} job(s)", workers=workers, jobs=records)
    records = follow_jobs(study, jobs, progress)
    after = study.counts()
    done = sum(after.get(k, 0) - before.get(k, 0) for k in ("COMPLETE", "PRUNED"))
    states = ", ".join(sorted({job["state"].lower() for job in records}))
    return RunSummary(
        study.name,
        f"jobs ended ({states})",
        finished=done,
        failed=after.get("FAIL", 0) - before.get("FAIL", 0),
        workers=workers,
        jobs=records,
    )


STORE_FAILED_PREFIX = "ct-tune: error: the Optuna storage "  # how a worker's StoreFailed line starts


def _store_failure_line(log_file: Path | None) -> str | None:
    """The StoreFailed line a worker ended its log with (a damaged, read-only or full Optuna storage)."""
    try:
        lines = log_file.read_text(errors="replace").strip().splitlines() if log_file is not None else []
    except OSError:
        return None
    last = lines[-1] if lines else ""
    if last.startswith(STORE_FAILED_PREFIX) and "stopped answering" not in last:
        return last.removeprefix("ct-tune: error: ")
    return None


def _finished(study: Study) -> int:
    try:
        states = count_states(study.storage, study.study_id)
    except Exception as error:
        if not is_database_error(error):
            raise
        raise storage_failure(error, study=study.name, storage_url=study.storage_url) from None
    return states["COMPLETE"] + states["PRUNED"]


def _exit_text(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"
