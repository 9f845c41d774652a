"""The trial loop of one worker: the model and data are loaded once (a ``Bench``), then each trial
updates the steering betas, scores the model, reports to Optuna and is recorded in MLflow.

How many trials run is the ``Budget``'s business (a total over every worker); how a trial is written to
MLflow is the ``TrialRecorder``'s. A worker that dies mid-trial leaves its trial RUNNING; its heartbeat
stops, another worker marks it FAIL, closes its MLflow run as FAILED and enqueues a retry with the same
betas. Ctrl-C marks the running trial FAIL (Optuna does) and its run FAILED (we do); running again resumes.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ct_tune._errors import StorageLost, StudyDeleted
from ct_tune.bench import Bench
from ct_tune.objectives import ObjectiveResult
from ct_tune.search._budget import Budget, DatabaseGone, storage_failure
from ct_tune.search._progress import TrialLine
from ct_tune.search._record import TrialRecorder, objective_tags, refresh_study_plots, stale_trial_callback
from ct_tune.search._samplers import build_pruner, build_sampler, trial_seed
from ct_tune.search._space import param_names, suggest
from ct_tune.steering import fused_status
from ct_tune.stores import database_cause, database_reason, is_database_error
from ct_tune.tracking import Tracker, split_datasets
from ct_tune.tracking.keys import ATTR_KIND
from ct_tune.workers import Heartbeats, InterruptGuard, heartbeat_interval

if TYPE_CHECKING:
    from ct_tune.search._study import Study

    import optuna

__all__ = ["LoopSettings", "TrialLoop", "WorkerSummary"]

logger = logging.getLogger(__name__)

PLOT_REFRESH_SECONDS = 30.0
PRUNING_CHECKS = 10  # pruner decisions per trial, at evenly spaced fractions of the val set


@dataclass
class LoopSettings:
    target_total: int | None  # finished (COMPLETE + PRUNED) trials the study should reach
    deadline: float | None = None  # time.time() after which no new trial starts
    worker: int = 0
    heartbeat_interval: int = 10
    grace_period: int | None = None
    poll_seconds: float = 2.0
    refresh_plots: bool = True
    on_trial: Callable[[TrialLine], None] | None = None  # progress: called after each trial
    keep_going: Callable[[], bool] | None = None  # checked before each round: False stops the loop
    # Whether this loop sets the study's parent run RUNNING and ends it. A launch (``run_study``) does
    # that itself around all its workers; a worker started some other way (a cluster executor) does it.
    owns_parent_run: bool = True


@dataclass
class WorkerSummary:
    """What one worker did; a worker process sends it to its launcher (without its trials, sent one by one)."""

    finished: int = 0  # trials this worker finished (COMPLETE + PRUNED)
    failed: int = 0
    discarded: int = 0
    reason: str = ""
    trials: list[TrialLine] = field(default_factory=list)
    # Seconds per kind of work, summed over this worker's trials: "evaluate" (scoring the model),
    # "tracking" (MLflow calls), "optuna" (sampling, storage reads and writes, heartbeats).
    seconds: dict[str, float] = field(default_factory=lambda: {"evaluate": 0.0, "tracking": 0.0, "optuna": 0.0})

    COUNTS = ("finished", "failed", "discarded", "reason", "seconds")  # what a worker's last event carries

    def counts(self) -> dict[str, Any]:
        """Everything but the trials: a worker's last event."""
        return {key: getattr(self, key) for key in self.COUNTS}

    @classmethod
    def from_counts(cls, data: Mapping[str, Any]) -> WorkerSummary:
        return cls(**{key: data[key] for key in cls.COUNTS if key in data})


class _Pruned(Exception):
    """Raised inside the evaluation when the pruner stops the trial (turned into optuna.TrialPruned)."""


@dataclass
class _Begun:
    """A trial whose betas are drawn and whose MLflow run is open."""

    trial: optuna.Trial
    betas: dict[str, float]
    c: float
    run_id: str
    history: list[tuple[str, float, int]] = field(default_factory=list)  # running values, for MLflow


@dataclass
class _Outcome:
    """How a trial's scoring ended, before Optuna is told."""

    state: str  # COMPLETE, PRUNED or FAIL
    results: Mapping[str, ObjectiveResult] = field(default_factory=dict)
    values: tuple[float, ...] | None = None
    failure: str = ""


def _failure_text(error: BaseException) -> str:
    """What a failed trial's MLflow run records as its failure."""
    return "interrupted (Ctrl-C)" if isinstance(error, KeyboardInterrupt) else repr(error)[:500]


class TrialLoop:
    """Runs trials of one study in this process until the budget or the deadline is reached."""

    def __init__(self, study: Study, bench: Bench, tracker: Tracker, settings: LoopSettings) -> None:
        import optuna

        if bench.handle is None:
            raise ValueError("the bench was opened without steering")
        self.bench = bench
        self.tracker = tracker
        self.settings = settings
        self.study = study.reopened(
            heartbeat_interval=settings.heartbeat_interval,
            grace_period=settings.grace_period,
            stale_trial_callback=stale_trial_callback(lambda: tracker, study.experiment_id),
        )
        spec = self.study.spec
        self._param_names = param_names(spec, self.study.units)
        # Replaced before each trial draws its betas (``_begin``); this one only serves the first ask.
        first_sampler = build_sampler(
            spec, self._param_names, seed=trial_seed(spec.sampler.seed, -1 - settings.worker), families=study.families
        )
        self.optuna_study = optuna.load_study(
            study_name=self.study.name, storage=self.study.storage, sampler=first_sampler, pruner=build_pruner(spec)
        )
        self.budget = Budget(
            self.optuna_study,
            self.study.storage,
            self.study.study_id,
            target_total=settings.target_total,
            deadline=settings.deadline,
        )
        self.evaluator = bench.evaluator("val")
        self.objective_names = spec.objective_names
        self.batch = spec.run.trials_per_batch
        self.recorder = TrialRecorder(
            tracker,
            study_name=self.study.name,
            experiment_id=self.study.experiment_id,
            parent_run_id=self.study.parent_run_id,
            sampler=spec.sampler.name,
            worker=settings.worker,
            device_label=bench.device_label,
            device=bench.device,
            trials_per_batch=self.batch,
            lowest_beta=spec.search.lowest(study.families_used),
            baselines=study.baselines,
            run_tags=objective_tags(self.evaluator.objectives),
            units=self.study.units,
            datasets=split_datasets(self.study.meta.get("data") or {}, ["val"]),
        )
        logger.info("worker %d: CT activation %s", settings.worker, fused_status(bench.device.type))
        self.prune = len(spec.objectives) == 1 and spec.pruner.name != "none" and self.batch == 1
        if self.batch > 1:
            logger.info(
                "worker %d: %d trials per batch (asked together, scored in one pass, told together); no pruning",
                settings.worker,
                self.batch,
            )
        self.summary = WorkerSummary()
        self._trial_evaluate = self._trial_tracking = 0.0
        self._round_evaluate = self._round_tracking = 0.0  # summed over the trials of one loop round
        self._interrupts = InterruptGuard()
        self._val_samples = len(self.evaluator.data.val_y)
        self._last_plots = 0.0
        self._open_runs: dict[str, int] = {}  # MLflow run id -> trial number, for runs this worker has not closed

    # ----------------------------------------------------------------------------------------------
    # The loop
    def run(self) -> WorkerSummary:
        parent = self.study.parent_run_id
        if self.settings.owns_parent_run:
            self.tracker.set_status(parent, "RUNNING")
        status: str | None = "FINISHED"
        try:
            with self._interrupts.installed():
                while (reason := self._stop_reason()) is None:
                    if self.budget.must_wait():
                        time.sleep(self.settings.poll_seconds)
                        continue
                    started = time.perf_counter()
                    self._round_evaluate = self._round_tracking = 0.0
                    with self._interrupts.deferred():
                        self._run_round()
                    spent = self.summary.seconds
                    spent["optuna"] += time.perf_counter() - started - self._round_evaluate - self._round_tracking
            self.summary.reason = reason
        except KeyboardInterrupt:
            status = "KILLED"
            self.summary.reason = "interrupted"
            raise
        except Exception as error:
            status = "FAILED"
            if self._study_deleted():
                status = None  # its runs were ended KILLED by the delete, its experiment archived
                self.summary.reason = "the study was deleted"
                raise StudyDeleted(deleted_message(self.study.name)) from None
            if is_database_error(error) or isinstance(error, DatabaseGone):
                failure = storage_failure(
                    error, study=self.study.name, storage_url=self.study.storage_url, who="; this worker stopped"
                )
                self.summary.reason = f"database failed: {database_reason(database_cause(error))}"
                if isinstance(failure, StorageLost):
                    status = None  # MLflow may be on the same lost server: the error is the one line
                else:  # the Optuna storage broke for good; MLflow is another store: close what it still can
                    self._close_open_runs(str(failure))
                raise failure from None
            raise
        finally:
            if status is not None:
                if self.settings.owns_parent_run:
                    self.tracker.set_status(parent, status)
                if self.settings.refresh_plots:
                    self.refresh_plots(force=True)
                self.tracker.flush()
        return self.summary

    def _study_deleted(self) -> bool:
        """Whether the error came from a study deleted under this worker (``study delete --force``): Optuna
        then raises KeyError 'Record does not exist.' (or an integrity error) wherever it next looks."""
        try:
            return all(summary.study_name != self.study.name for summary in self.study.storage.get_all_studies())
        except Exception:  # the database itself is gone: that is the one line
            return False

    def _close_open_runs(self, reason: str) -> None:
        """End FAILED the trial runs this worker opened and could not end (Optuna could not be told)."""
        for run_id, number in list(self._open_runs.items()):
            self.tracker.close_run(run_id, state="FAIL", reason=reason)
            logger.info("worker %d: trial %d: its MLflow run ended FAILED", self.settings.worker, number)
        self._open_runs.clear()

    def _stop_reason(self) -> str | None:
        if self.settings.keep_going is not None and not self.settings.keep_going():
            return "the launcher is gone"
        return self.budget.stop_reason()

    def _run_round(self) -> None:
        """Ask up to K trials (``run.trials_per_batch``, 1 by default), score them, and end each one.

        Ask-and-tell rather than ``study.optimize``: the end of a trial is ours to order (Optuna first,
        then MLflow, then the progress line), and one or K trials take the same path. Every trial is
        checked for surplus (the budget stays exact) and keeps a heartbeat while it is scored.
        """
        import optuna
        from optuna.trial import TrialState

        k = self.batch
        room = self.budget.room()
        if room is not None:
            k = max(1, min(k, room))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if heartbeat_interval(self.study.storage) is not None:
                optuna.storages.fail_stale_trials(self.optuna_study)  # what study.optimize does before each ask
        trials: list[optuna.Trial] = []
        try:
            for _ in range(k):
                with warnings.catch_warnings():  # our Heartbeats serve asked trials, which Optuna does not know
                    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
                    trials.append(self.optuna_study.ask())
        except BaseException:
            for trial in trials:
                self._tell(trial, TrialState.FAIL)
            raise
        live = []
        for trial in trials:
            if self.budget.is_surplus(trial.number):
                self.budget.discard(trial)
                self._tell(trial, TrialState.FAIL)
                self.summary.discarded += 1
            else:
                live.append(trial)
        if live:
            with Heartbeats(self.study.storage, [trial._trial_id for trial in live]):
                self._score(live)

    def _score(self, trials: list[optuna.Trial]) -> None:
        """Score the trials (one: with pruning checks; several: in one pass), then end each of them.
        A failure that is not the trial's own (Ctrl-C, a lost database) is raised after the trials ended."""
        started = time.perf_counter()
        begun: list[_Begun] = []
        outcomes: list[_Outcome] = []
        raised: BaseException | None = None
        evaluate_seconds = 0.0
        try:
            for trial in trials:
                self._trial_tracking = 0.0
                begun.append(self._begin(trial))
                self._round_tracking += self._trial_tracking
            with self._interrupts.interruptible():
                evaluate_started = time.perf_counter()
                try:
                    if len(begun) == 1:
                        only = begun[0]
                        self.bench.handle.update(only.betas, c=only.c)  # type: ignore[union-attr]
                        results = [dict(self.evaluator.evaluate(self._reporter(only.trial, only.history)))]
                    else:
                        results = self.evaluator.evaluate_profiles(
                            self.bench.handle,  # type: ignore[arg-type]
                            [(b.betas, b.c) for b in begun],
                        )
                finally:
                    evaluate_seconds = time.perf_counter() - evaluate_started
            for trial_results in results:
                outcomes.append(self._outcome(trial_results))
        except _Pruned:
            outcomes = [_Outcome("PRUNED")]
        except BaseException as error:  # Ctrl-C, a lost database, an evaluation that raises
            outcomes = [_Outcome("FAIL", failure=_failure_text(error)) for _ in begun]
            raised = error
        from optuna.trial import TrialState

        for trial in trials[len(begun) :]:  # asked but never begun (their MLflow run could not open)
            self._tell(trial, TrialState.FAIL)
        share = (time.perf_counter() - started) / len(trials)
        lines = []
        for begun_trial, outcome in zip(begun, outcomes, strict=True):
            self._trial_evaluate, self._trial_tracking = evaluate_seconds / len(trials), 0.0
            lines.append(self._end(begun_trial, outcome, share))
        for line in lines:  # once every trial is ended: a dead launcher's pipe cannot leave one RUNNING
            if self.settings.on_trial is not None:
                self.settings.on_trial(line)
        if self.settings.refresh_plots and any(line.state == "COMPLETE" for line in lines):
            self.refresh_plots()
        if raised is not None:
            raise raised

    def _outcome(self, results: Mapping[str, ObjectiveResult]) -> _Outcome:
        try:
            return _Outcome("COMPLETE", results=results, values=self._values(results))
        except RuntimeError as error:  # values that are not finite
            return _Outcome("FAIL", results=results, failure=_failure_text(error))

    def _begin(self, trial: optuna.Trial) -> _Begun:
        """Sample the trial's betas (with its own sampler seed) and open its MLflow child run."""
        seed = trial_seed(self.study.spec.sampler.seed, trial.number)
        self.optuna_study.sampler = build_sampler(
            self.study.spec, self._param_names, seed=seed, families=self.study.families
        )
        betas, c = suggest(trial, self.study.spec, self.study.units, self.study.families)
        kind, stored_kind = self._kind(trial)
        if kind != stored_kind:  # enqueued trials carry theirs; "sampled" is the default when absent
            trial.set_user_attr(ATTR_KIND, kind)
        tracking_started = time.perf_counter()
        run_id = self.recorder.open(trial, betas, c, kind, sampler_seed=seed)
        self._open_runs[run_id] = trial.number
        self._trial_tracking += time.perf_counter() - tracking_started
        return _Begun(trial, betas, c, run_id)

    def _kind(self, trial: optuna.Trial) -> tuple[str, str]:
        """(kind, kind stored on the trial): baseline / paper-grid / warm-start (enqueued), retry (of a trial
        whose worker died: it inherited the dead trial's attributes), or sampled."""
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        storage = self.study.storage
        frozen = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(self.study.study_id, trial.number))
        stored = str(frozen.user_attrs.get(ATTR_KIND, "sampled"))
        if RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen) is not None:
            return "retry", stored
        return stored, stored

    def _reporter(self, trial: optuna.Trial, history: list[tuple[str, float, int]]):
        """Running values go to MLflow after every chunk; to Optuna (a storage write and a pruner
        decision each) at most PRUNING_CHECKS times per trial."""
        name = self.objective_names[0] if len(self.objective_names) == 1 else None
        gap = max(1, self._val_samples // PRUNING_CHECKS)
        last = [0]

        def report(value: float, step: int) -> None:
            if name is not None:
                history.append((f"{name}.running", value, step))
            if self.prune and (step - last[0] >= gap or step >= self._val_samples):
                last[0] = step
                trial.report(value, step)
                if trial.should_prune():
                    raise _Pruned

        return report

    def _values(self, results: Mapping[str, ObjectiveResult]) -> tuple[float, ...]:
        """The objective values in the spec's order; a value that is not finite fails the trial."""
        values = tuple(results[name].value for name in self.objective_names)
        if not all(math.isfinite(v) for v in values):
            raise RuntimeError(f"objective values are not finite: {values}")
        return values

    def _tell(
        self, trial: optuna.Trial, state: optuna.trial.TrialState, values: tuple[float, ...] | None = None
    ) -> optuna.trial.TrialState:
        """Tell Optuna, the truth of the study (``values`` come with COMPLETE only); returns the state the
        trial holds afterwards. It differs from ``state`` when another worker ended the trial first (its
        heartbeat was late: that worker failed it and enqueued a retry)."""
        import optuna

        told = None if values is None else (values[0] if len(values) == 1 else list(values))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                frozen = self.optuna_study.tell(trial, told, state=state, skip_if_finished=True)
            return frozen.state
        except optuna.exceptions.UpdateFinishedTrialError:  # ended elsewhere between Optuna's check and write
            return self.study.storage.get_trial(trial._trial_id).state

    def _end(self, begun: _Begun, outcome: _Outcome, seconds: float) -> TrialLine:
        """End one trial: Optuna first, then its MLflow run with the state Optuna holds; returns its progress
        line. A crash between the two leaves a RUNNING run that the next launch closes (``close_orphan_runs``)."""
        from optuna.trial import TrialState

        trial = begun.trial
        held = self._tell(trial, TrialState[outcome.state], outcome.values).name
        results, failure = outcome.results, outcome.failure
        if held != outcome.state:
            failure = (
                f"scored {outcome.state}, but another worker had already ended it {held}: this worker's "
                "heartbeat was late, so the trial was failed and enqueued again"
            )
            logger.warning("worker %d: trial %d: %s", self.settings.worker, trial.number, failure)
            results = {}
        tracking_started = time.perf_counter()
        self._open_runs.pop(begun.run_id, None)
        metrics = self.recorder.close(
            trial.number,
            begun.run_id,
            state=held,
            betas=begun.betas,
            c=begun.c,
            results=results,
            history=begun.history,
            seconds=seconds,
            failure=failure,
        )
        self._trial_tracking += time.perf_counter() - tracking_started
        self.summary.seconds["evaluate"] += self._trial_evaluate
        self.summary.seconds["tracking"] += self._trial_tracking
        self._round_evaluate += self._trial_evaluate
        self._round_tracking += self._trial_tracking
        line = TrialLine(
            number=trial.number,
            state=held,
            seconds=seconds,
            values={n: r.value for n, r in results.items()},
            betas=begun.betas,
            c=begun.c,
            rss_mb=metrics.get("worker_rss_mb"),
            ended=time.time(),
        )
        if line.finished:
            self.summary.finished += 1
        else:
            self.summary.failed += 1
        self.summary.trials.append(line)
        return line

    # ----------------------------------------------------------------------------------------------
    # Parent run
    def refresh_plots(self, *, force: bool = False) -> None:
        """Plots and best values on the parent run, at most every PLOT_REFRESH_SECONDS (in the background)."""
        now = time.monotonic()
        if not force and now - self._last_plots < PLOT_REFRESH_SECONDS:
            return
        self._last_plots = now
        refresh_study_plots(self.study, self.tracker, wait=force)


def deleted_message(name: str) -> str:
    """The one line of a launch whose study was deleted while it ran (exit 4)."""
    return (
        f"study {name!r} was deleted while it ran ('ct-tune study delete --force'); its workers stopped and its "
        f"MLflow runs were ended KILLED; create it again with 'ct-tune study create' to search again"
    )
